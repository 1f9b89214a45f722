//! egressd kernel side: loads the C eBPF programs built from `bpf/`, attaches
//! them to a cgroup v2 directory, and answers "what was the original
//! destination of this accepted socket, and which process made it?".
