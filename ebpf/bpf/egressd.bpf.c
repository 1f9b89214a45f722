// SPDX-License-Identifier: GPL-2.0
//
// egressd kernel programs. They never decide policy: they send every outbound
// TCP connection and DNS query of the filtered cgroup to the egressd proxy,
// remember where it was going and who asked, and deny in the kernel what the
// proxy cannot see (UDP other than DNS, ping/raw sockets, anything that slipped
// past the socket hooks, frames of packet sockets). Every deny is reported through
// the `events` ring buffer; reports the ring buffer had no room for are counted in
// `events_lost`.
//
// Addresses are kept in one 16-byte form: IPv6 as is, IPv4 as v4-mapped
// (::ffff:a.b.c.d), so a dual-stack socket talking IPv4 and a plain IPv4
// socket produce the same keys.
//
// Build: cargo xtask ebpf-build (clang-19 -target bpf -O2 -g).
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define SOCK_DGRAM 2
#define SOCK_RAW 3
#define SOL_SOCKET 1
#define SO_MARK 36
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define DNS_PORT 53
#define AF_PACKET 17
#define AF_XDP 44
#define SOL_PACKET 263
#define PACKET_QDISC_BYPASS 20
#define SOL_XDP 283

/* Verdicts of tc programs. A frame that is not ours gets TC_ACT_UNSPEC ("no opinion":
 * tcx's TCX_NEXT, the next classifier under clsact), never TC_ACT_OK, which would end
 * the chain and hide the frame from the guard of another egressd on the same host. */
#define TC_ACT_UNSPEC (-1)
#define TC_ACT_SHOT 2

/* Verdicts of cgroup programs. */
#define ALLOW 1
#define DENY 0

/* Kinds of in-kernel denies; mirrored by `DenyKind` in src/event.rs. */
#define DENY_UDP 1
#define DENY_ICMP 2
#define DENY_RAW 3
#define DENY_BACKSTOP 5
#define DENY_NO_GATEWAY 6
#define DENY_PACKET 7
#define DENY_SOCKOPT 8

/* Set by the loader before load (EbpfLoader::override_global). Ports in host order,
 * addresses in the 16-byte form above (network order bytes). */
volatile const __u16 proxy_port = 0;
volatile const __u16 dns_port = 0;
volatile const __u32 bypass_mark = 0;      /* 0 = no mark exemption */
volatile const __u64 proxy_cgroup_id = 0;  /* 0 = no cgroup exemption */
volatile const __u32 gw4 = 0;              /* container gateway, IPv4, network order; 0 = none */
volatile const __u32 gw6[4] = {0, 0, 0, 0}; /* container gateway, IPv6; all zero = none */
volatile const __u64 filter_cgroup_id = 0;    /* the filtered cgroup (packet_guard); 0 = none */
volatile const __u32 filter_cgroup_level = 0; /* its depth below the cgroup v2 root */

struct orig {
    __u8 addr[16];     /* original destination, 16-byte form */
    __u16 port;        /* network order */
    __u16 family;      /* AF_INET when the destination is IPv4 (also v4-mapped), else AF_INET6 */
    __u32 pid;         /* tgid of the process that connected/sent */
    __u64 cgroup_id;
    __u64 netns_cookie;
    char comm[16];
};

/* Full 4-tuple of the redirected flow as the proxy sees it: s = the client,
 * d = the proxy address it reached. Ports in host order. */
struct tuple {
    __u8 saddr[16];
    __u8 daddr[16];
    __u16 sport;
    __u16 dport;
    __u32 pad;
};

struct deny_event {
    __u64 cgroup_id;
    __u32 pid;
    __u32 kind;
    __u8 addr[16];     /* destination if known, 16-byte form */
    __u16 port;        /* network order; 0 if unknown */
    __u16 family;      /* AF_INET/AF_INET6 of the destination; 0 if none */
    __u32 protocol;    /* IP protocol (or socket protocol, option level, EtherType) */
    char comm[16];
    __u64 cookie;      /* socket cookie; 0 if not known */
};

/* What a socket created under egressd remembers (sk_storage). Sockets without it
 * existed before egressd attached (the runner's own) and the backstop leaves them alone. */
struct sock_info {
    __u64 cgroup_id;
    __u32 pid;
    __u32 reported;    /* a deny of this socket was already reported (once per socket) */
    char comm[16];
};

struct lpm_key {
    __u32 prefixlen;
    __u8 addr[16];
};

/* Socket cookie -> original destination (getpeername, recvmsg, sockops). */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, __u64);
    __type(value, struct orig);
} cookie_orig SEC(".maps");

/* Flow 4-tuple -> original destination: what the proxy looks up on accept/recv. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct tuple);
    __type(value, struct orig);
} tuple_orig SEC(".maps");

/* Destinations left alone like loopback: the networks of this host's container
 * bridges (kept in step by the loader) and configured ones, 16-byte form. The
 * longest matching prefix decides: value 1 = left alone, 0 = not (a more specific
 * route inside a bridge's network that leads elsewhere). */
struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, 1024);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct lpm_key);
    __type(value, __u8);
} passthrough SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct sock_info);
} sock_born SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* Deny reports dropped because the ring buffer was full (index 0). */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} events_lost SEC(".maps");

/* Cookies of the packet sockets that existed when egressd attached (filled by the
 * loader from sock_diag): packet_guard leaves them alone, as the backstop leaves
 * older IP sockets alone. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u64);
    __type(value, __u8);
} packet_old SEC(".maps");

/* Cookies of packet sockets whose drop was already reported (once per socket). */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 4096);
    __type(key, __u64);
    __type(value, __u8);
} packet_reported SEC(".maps");

static __always_inline void count_lost(void)
{
    __u32 zero = 0;
    __u64 *n = bpf_map_lookup_elem(&events_lost, &zero);
    if (n)
        __sync_fetch_and_add(n, 1);
}

static __always_inline void addr_from4(__u8 out[16], __u32 ip4)
{
    __builtin_memset(out, 0, 10);
    out[10] = 0xff;
    out[11] = 0xff;
    __builtin_memcpy(out + 12, &ip4, 4);
}

static __always_inline void addr_from6(__u8 out[16], const __u32 ip6[4])
{
    __u32 w[4] = {ip6[0], ip6[1], ip6[2], ip6[3]};
    __builtin_memcpy(out, w, 16);
}

static __always_inline int is_v4mapped(const __u32 ip6[4])
{
    return ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int is_loopback4(__u32 ip4)
{
    return (bpf_ntohl(ip4) >> 24) == 127;
}

static __always_inline int is_loopback6(const __u32 ip6[4])
{
    return ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0 && ip6[3] == bpf_htonl(1);
}

static __always_inline int is_passthrough(const __u8 addr[16])
{
    struct lpm_key k = {.prefixlen = 128};
    __builtin_memcpy(k.addr, addr, 16);
    __u8 *local = bpf_map_lookup_elem(&passthrough, &k);
    return local && *local;
}

static __always_inline int exempt(struct bpf_sock_addr *ctx)
{
    if (bypass_mark) {
        int mark = 0;
        if (!bpf_getsockopt(ctx, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) && (__u32)mark == bypass_mark)
            return 1;
    }
    if (proxy_cgroup_id && bpf_get_current_cgroup_id() == proxy_cgroup_id)
        return 1;
    return 0;
}

static __always_inline int in_host_netns(struct bpf_sock_addr *ctx)
{
    return bpf_get_netns_cookie(ctx) == bpf_get_netns_cookie(0);
}

static __always_inline void emit_deny(__u32 kind, const __u8 addr[16], __u16 port, __u16 family,
                                      __u32 protocol)
{
    struct deny_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e) {
        count_lost(); /* ring full: the deny still happens, its report is counted as lost */
        return;
    }
    e->cgroup_id = bpf_get_current_cgroup_id();
    e->pid = bpf_get_current_pid_tgid() >> 32;
    e->kind = kind;
    if (addr)
        __builtin_memcpy(e->addr, addr, 16);
    else
        __builtin_memset(e->addr, 0, 16);
    e->port = port;
    e->family = family;
    e->protocol = protocol;
    bpf_get_current_comm(e->comm, sizeof(e->comm));
    e->cookie = 0;
    bpf_ringbuf_submit(e, 0);
}

static __always_inline void remember(struct bpf_sock_addr *ctx, const __u8 addr[16], __u16 port,
                                     __u16 family)
{
    struct orig o = {};
    __builtin_memcpy(o.addr, addr, 16);
    o.port = port;
    o.family = family;
    o.pid = bpf_get_current_pid_tgid() >> 32;
    o.cgroup_id = bpf_get_current_cgroup_id();
    o.netns_cookie = bpf_get_netns_cookie(ctx);
    bpf_get_current_comm(o.comm, sizeof(o.comm));
    __u64 ck = bpf_get_socket_cookie(ctx);
    bpf_map_update_elem(&cookie_orig, &ck, &o, BPF_ANY);
}

/* Where a redirected socket goes. IPv4 targets are returned in `t4` (network order),
 * IPv6 in `t6`; returns 0 when there is no target (a foreign netns with no gateway). */
static __always_inline int target4(struct bpf_sock_addr *ctx, __u32 *t4)
{
    if (in_host_netns(ctx)) {
        *t4 = bpf_htonl(0x7f000001);
        return 1;
    }
    *t4 = gw4;
    return gw4 != 0;
}

static __always_inline int target6(struct bpf_sock_addr *ctx, __u32 t6[4])
{
    if (in_host_netns(ctx)) {
        t6[0] = 0;
        t6[1] = 0;
        t6[2] = 0;
        t6[3] = bpf_htonl(1);
        return 1;
    }
    t6[0] = gw6[0];
    t6[1] = gw6[1];
    t6[2] = gw6[2];
    t6[3] = gw6[3];
    return (t6[0] | t6[1] | t6[2] | t6[3]) != 0;
}

/* A UDP datagram to a port other than DNS has no userspace path: its send gets EPERM.
 * Only a send is refused. connect() on a UDP socket sends nothing (glibc's getaddrinfo
 * connects one to each address it returns to sort them by reachability, RFC 6724),
 * so it is left to the kernel, routing errors included; a datagram the connected
 * socket later sends is dropped with EPERM by skb_egress. Reported once per socket. */
static __always_inline void deny_udp_send(struct bpf_sock_addr *ctx, const __u8 addr[16],
                                          __u16 family, __u32 proto)
{
    struct bpf_sock *sk = ctx->sk;
    if (sk) {
        struct sock_info *si = bpf_sk_storage_get(&sock_born, sk, 0, 0);
        if (si) {
            if (si->reported)
                return;
            si->reported = 1;
        }
    }
    emit_deny(DENY_UDP, addr, ctx->user_port, family, proto);
}

/* Decide one connect (TCP, UDP) or unconnected UDP sendmsg destination. Returns ALLOW
 * (possibly rewritten to the proxy) or DENY (EPERM to the caller). */
static __always_inline int steer4(struct bpf_sock_addr *ctx, int is_connect)
{
    __u32 dip = ctx->user_ip4;
    __u16 dport = bpf_ntohs((__u16)ctx->user_port);
    __u32 proto = ctx->protocol;
    __u8 a[16];
    addr_from4(a, dip);

    if (exempt(ctx))
        return ALLOW;
    if (is_loopback4(dip)) {
        /* Local services stay local, except a loopback resolver (127.0.0.53) on the host;
         * a container's loopback DNS (Docker's 127.0.0.11) is left alone. */
        if (dport != DNS_PORT || !in_host_netns(ctx))
            return ALLOW;
    } else if (dport != DNS_PORT && is_passthrough(a)) {
        /* A resolver on a container bridge (a dnsmasq on docker0's address) is still
         * a resolver: its queries go to egressd like the host's loopback one. */
        return ALLOW;
    }
    if (proto != IPPROTO_TCP && !(proto == IPPROTO_UDP && dport == DNS_PORT)) {
        if (is_connect)
            return ALLOW;
        deny_udp_send(ctx, a, AF_INET, proto);
        return DENY;
    }
    __u32 t4;
    if (!target4(ctx, &t4)) {
        emit_deny(DENY_NO_GATEWAY, a, ctx->user_port, AF_INET, proto);
        return DENY;
    }
    remember(ctx, a, ctx->user_port, AF_INET);
    ctx->user_ip4 = t4;
    ctx->user_port = bpf_htons(proto == IPPROTO_TCP && dport != DNS_PORT ? proxy_port : dns_port);
    return ALLOW;
}

static __always_inline int steer6(struct bpf_sock_addr *ctx, int is_connect)
{
    __u32 d[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
    __u16 dport = bpf_ntohs((__u16)ctx->user_port);
    __u32 proto = ctx->protocol;
    int mapped = is_v4mapped(d);
    __u16 family = mapped ? AF_INET : AF_INET6;
    __u8 a[16];
    addr_from6(a, d);

    if (exempt(ctx))
        return ALLOW;
    if (mapped ? is_loopback4(d[3]) : is_loopback6(d)) {
        if (dport != DNS_PORT || !in_host_netns(ctx))
            return ALLOW;
    } else if (dport != DNS_PORT && is_passthrough(a)) {
        return ALLOW;
    }
    if (proto != IPPROTO_TCP && !(proto == IPPROTO_UDP && dport == DNS_PORT)) {
        if (is_connect)
            return ALLOW;
        deny_udp_send(ctx, a, family, proto);
        return DENY;
    }
    __u32 t[4] = {0, 0, 0, 0};
    if (mapped) {
        __u32 t4;
        if (!target4(ctx, &t4)) {
            emit_deny(DENY_NO_GATEWAY, a, ctx->user_port, family, proto);
            return DENY;
        }
        t[2] = bpf_htonl(0x0000ffff);
        t[3] = t4;
    } else if (!target6(ctx, t)) {
        emit_deny(DENY_NO_GATEWAY, a, ctx->user_port, family, proto);
        return DENY;
    }
    remember(ctx, a, ctx->user_port, family);
    ctx->user_ip6[0] = t[0];
    ctx->user_ip6[1] = t[1];
    ctx->user_ip6[2] = t[2];
    ctx->user_ip6[3] = t[3];
    ctx->user_port = bpf_htons(proto == IPPROTO_TCP && dport != DNS_PORT ? proxy_port : dns_port);
    return ALLOW;
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
    return steer4(ctx, 1);
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
    return steer6(ctx, 1);
}

SEC("cgroup/sendmsg4")
int sendmsg4(struct bpf_sock_addr *ctx)
{
    return steer4(ctx, 0);
}

SEC("cgroup/sendmsg6")
int sendmsg6(struct bpf_sock_addr *ctx)
{
    return steer6(ctx, 0);
}

/* A DNS reply from the proxy appears to come from the resolver the app asked. */
SEC("cgroup/recvmsg4")
int recvmsg4(struct bpf_sock_addr *ctx)
{
    if (bpf_ntohs((__u16)ctx->user_port) != dns_port)
        return ALLOW;
    __u64 ck = bpf_get_socket_cookie(ctx);
    struct orig *o = bpf_map_lookup_elem(&cookie_orig, &ck);
    if (o && o->family == AF_INET) {
        __u32 ip4;
        __builtin_memcpy(&ip4, o->addr + 12, 4);
        ctx->user_ip4 = ip4;
        ctx->user_port = o->port;
    }
    return ALLOW; /* recvmsg programs must return 1 */
}

SEC("cgroup/recvmsg6")
int recvmsg6(struct bpf_sock_addr *ctx)
{
    if (bpf_ntohs((__u16)ctx->user_port) != dns_port)
        return ALLOW;
    __u64 ck = bpf_get_socket_cookie(ctx);
    struct orig *o = bpf_map_lookup_elem(&cookie_orig, &ck);
    if (o) {
        __u32 w[4];
        __builtin_memcpy(w, o->addr, 16);
        ctx->user_ip6[0] = w[0];
        ctx->user_ip6[1] = w[1];
        ctx->user_ip6[2] = w[2];
        ctx->user_ip6[3] = w[3];
        ctx->user_port = o->port;
    }
    return ALLOW;
}

/* The client still sees the peer it asked for. */
/* Only a peer that is one of the proxy's ports was put there by a redirect; a socket
 * that later connected elsewhere keeps its real peer. */
static __always_inline int is_proxy_peer(struct bpf_sock_addr *ctx)
{
    __u16 port = bpf_ntohs((__u16)ctx->user_port);
    return port == proxy_port || port == dns_port;
}

SEC("cgroup/getpeername4")
int getpeername4(struct bpf_sock_addr *ctx)
{
    if (!is_proxy_peer(ctx))
        return ALLOW;
    __u64 ck = bpf_get_socket_cookie(ctx);
    struct orig *o = bpf_map_lookup_elem(&cookie_orig, &ck);
    if (o && o->family == AF_INET) {
        __u32 ip4;
        __builtin_memcpy(&ip4, o->addr + 12, 4);
        ctx->user_ip4 = ip4;
        ctx->user_port = o->port;
    }
    return ALLOW;
}

SEC("cgroup/getpeername6")
int getpeername6(struct bpf_sock_addr *ctx)
{
    if (!is_proxy_peer(ctx))
        return ALLOW;
    __u64 ck = bpf_get_socket_cookie(ctx);
    struct orig *o = bpf_map_lookup_elem(&cookie_orig, &ck);
    if (o) {
        __u32 w[4];
        __builtin_memcpy(w, o->addr, 16);
        ctx->user_ip6[0] = w[0];
        ctx->user_ip6[1] = w[1];
        ctx->user_ip6[2] = w[2];
        ctx->user_ip6[3] = w[3];
        ctx->user_port = o->port;
    }
    return ALLOW;
}

static __always_inline int flow_of(struct bpf_sock_ops *skops, struct tuple *t)
{
    if (skops->family == AF_INET) {
        addr_from4(t->saddr, skops->local_ip4);
        addr_from4(t->daddr, skops->remote_ip4);
    } else if (skops->family == AF_INET6) {
        /* 32-bit context loads only: clang would otherwise merge two into one 8-byte
         * load, which the verifier rejects. */
        __u32 s[4], d[4];
        for (int i = 0; i < 4; i++) {
            s[i] = *(volatile __u32 *)&skops->local_ip6[i];
            d[i] = *(volatile __u32 *)&skops->remote_ip6[i];
        }
        addr_from6(t->saddr, s);
        addr_from6(t->daddr, d);
    } else {
        return 0;
    }
    t->sport = (__u16)skops->local_port;                 /* host order */
    t->dport = (__u16)bpf_ntohl(skops->remote_port);     /* network order in the upper half */
    return 1;
}

/* Once a redirected TCP connection is established, index it by its full 4-tuple,
 * the key the proxy has on accept (ports collide across network namespaces), and
 * ask for state changes so both entries go when the connection closes. */
SEC("sockops")
int sock_ops(struct bpf_sock_ops *skops)
{
    __u32 op = skops->op;
    if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_STATE_CB)
        return 1;
    if (op == BPF_SOCK_OPS_STATE_CB && skops->args[1] != BPF_TCP_CLOSE)
        return 1;
    __u64 ck = bpf_get_socket_cookie(skops);
    struct orig *o = bpf_map_lookup_elem(&cookie_orig, &ck);
    if (!o)
        return 1;
    struct tuple t = {};
    if (!flow_of(skops, &t))
        return 1;
    if (op == BPF_SOCK_OPS_STATE_CB) {
        bpf_map_delete_elem(&tuple_orig, &t);
        bpf_map_delete_elem(&cookie_orig, &ck);
        return 1;
    }
    bpf_map_update_elem(&tuple_orig, &t, o, BPF_ANY);
    bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
    return 1;
}

/* Deny raw and ICMP "ping" sockets; remember who created every other one. */
SEC("cgroup/sock_create")
int sock_create(struct bpf_sock *sk)
{
    if (proxy_cgroup_id && bpf_get_current_cgroup_id() == proxy_cgroup_id)
        return ALLOW;
    __u32 family = sk->family, type = sk->type, proto = sk->protocol;
    if (family == AF_INET || family == AF_INET6) {
        if (type == SOCK_RAW) {
            emit_deny(DENY_RAW, 0, 0, 0, proto);
            return DENY;
        }
        if (type == SOCK_DGRAM && (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6)) {
            emit_deny(DENY_ICMP, 0, 0, 0, proto);
            return DENY;
        }
    }
    struct sock_info *si = bpf_sk_storage_get(&sock_born, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (si) {
        si->cgroup_id = bpf_get_current_cgroup_id();
        si->pid = bpf_get_current_pid_tgid() >> 32;
        bpf_get_current_comm(si->comm, sizeof(si->comm));
    }
    return ALLOW;
}

static __always_inline int dst_allowed(const __u8 a[16], int v4)
{
    __u32 w[4];
    __builtin_memcpy(w, a, 16);
    if (v4) {
        if (is_loopback4(w[3]) || (gw4 && w[3] == gw4))
            return 1;
    } else {
        if (is_loopback6(w))
            return 1;
        if ((gw6[0] | gw6[1] | gw6[2] | gw6[3]) && w[0] == gw6[0] && w[1] == gw6[1] &&
            w[2] == gw6[2] && w[3] == gw6[3])
            return 1;
    }
    return is_passthrough(a);
}

/* The backstop: a packet from a socket created under egressd that is not going to
 * loopback, the proxy's gateway or a passthrough network did not go through the
 * socket hooks: drop it. Sockets without `sock_born` storage existed before egressd
 * (or were accepted from a listener) and are left alone, so the runner's own
 * connections survive. Also indexes redirected DNS datagrams by their real 4-tuple. */
SEC("cgroup_skb/egress")
int skb_egress(struct __sk_buff *skb)
{
    struct tuple t = {};
    __u32 proto;
    int v4;
    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        struct iphdr ip;
        if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
            return ALLOW;
        addr_from4(t.saddr, ip.saddr);
        addr_from4(t.daddr, ip.daddr);
        proto = ip.protocol;
        v4 = 1;
        if (proto == IPPROTO_UDP || proto == IPPROTO_TCP) {
            struct udphdr uh; /* TCP starts with the same two ports */
            if (!bpf_skb_load_bytes(skb, ip.ihl * 4, &uh, sizeof(uh))) {
                t.sport = bpf_ntohs(uh.source);
                t.dport = bpf_ntohs(uh.dest);
            }
        }
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr ip6;
        if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
            return ALLOW;
        __builtin_memcpy(t.saddr, &ip6.saddr, 16);
        __builtin_memcpy(t.daddr, &ip6.daddr, 16);
        proto = ip6.nexthdr;
        v4 = 0;
        if (proto == IPPROTO_UDP || proto == IPPROTO_TCP) {
            struct udphdr uh;
            if (!bpf_skb_load_bytes(skb, sizeof(ip6), &uh, sizeof(uh))) {
                t.sport = bpf_ntohs(uh.source);
                t.dport = bpf_ntohs(uh.dest);
            }
        }
    } else {
        return ALLOW;
    }

    if (proto == IPPROTO_UDP && t.dport == dns_port && dns_port) {
        __u64 ck = bpf_get_socket_cookie(skb);
        struct orig *o = bpf_map_lookup_elem(&cookie_orig, &ck);
        if (o)
            bpf_map_update_elem(&tuple_orig, &t, o, BPF_ANY);
    }

    if (bypass_mark && skb->mark == bypass_mark)
        return ALLOW;
    if (dst_allowed(t.daddr, v4))
        return ALLOW;
    struct bpf_sock *sk = skb->sk;
    if (!sk)
        return ALLOW;
    sk = bpf_sk_fullsock(sk);
    if (!sk)
        return ALLOW; /* request/timewait sockets: replies of accepted connections */
    struct sock_info *si = bpf_sk_storage_get(&sock_born, sk, 0, 0);
    if (!si)
        return ALLOW; /* older than egressd */
    if (proxy_cgroup_id && si->cgroup_id == proxy_cgroup_id)
        return ALLOW;
    if (!si->reported) {
        si->reported = 1;
        struct deny_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
        if (e) {
            e->cgroup_id = si->cgroup_id;
            e->pid = si->pid;
            /* A connected UDP socket's datagram to a non-DNS port ends here by design
             * (see deny_udp_send); anything else slipped past the socket hooks. */
            e->kind = proto == IPPROTO_UDP ? DENY_UDP : DENY_BACKSTOP;
            __builtin_memcpy(e->addr, t.daddr, 16);
            e->port = bpf_htons(t.dport);
            e->family = v4 ? AF_INET : AF_INET6;
            e->protocol = proto;
            __builtin_memcpy(e->comm, si->comm, 16);
            e->cookie = bpf_get_socket_cookie(skb);
            bpf_ringbuf_submit(e, 0);
        } else {
            count_lost();
        }
    }
    return DENY;
}

/* Socket options that would let a packet socket skip the tc hooks below:
 * PACKET_QDISC_BYPASS sends straight to the driver, and an AF_XDP socket cannot be
 * set up without SOL_XDP options (its frames also skip tc). Both get EPERM. */
SEC("cgroup/setsockopt")
int sockopt_guard(struct bpf_sockopt *ctx)
{
    /* Larger than a page: the program sees only the first page; 0 = let the kernel
     * use the caller's buffer as it is (kernels before 6.5 fail the call otherwise). */
    if (ctx->optlen > 4096)
        ctx->optlen = 0;
    if (proxy_cgroup_id && bpf_get_current_cgroup_id() == proxy_cgroup_id)
        return ALLOW;
    int level = ctx->level;
    if ((level == SOL_PACKET && ctx->optname == PACKET_QDISC_BYPASS) || level == SOL_XDP) {
        emit_deny(DENY_SOCKOPT, 0, 0, 0, (__u32)level);
        return DENY;
    }
    return ALLOW;
}

/* The packet-socket guard, on ingress and egress of every interface of the host's
 * network namespace but loopback. No cgroup hook sees AF_PACKET (or AF_XDP) sockets
 * being created, and their frames skip the IP output path (so cgroup_skb never runs),
 * but the sending socket stays attached to the frame: on egress for the host's own
 * namespace, and across a veth into the host's ingress for a container's. A frame
 * whose socket is a packet socket of a process in the filtered cgroup, created after
 * egressd attached, is dropped. Everything else is left to the next program. */
SEC("classifier")
int packet_guard(struct __sk_buff *skb)
{
    struct bpf_sock *sk = skb->sk;
    if (!sk)
        return TC_ACT_UNSPEC;
    sk = bpf_sk_fullsock(sk);
    if (!sk)
        return TC_ACT_UNSPEC;
    __u32 family = sk->family;
    if (family != AF_PACKET && family != AF_XDP)
        return TC_ACT_UNSPEC;
    if (!filter_cgroup_id || bpf_skb_ancestor_cgroup_id(skb, filter_cgroup_level) != filter_cgroup_id)
        return TC_ACT_UNSPEC;
    __u64 cgroup_id = bpf_skb_cgroup_id(skb);
    if (proxy_cgroup_id && cgroup_id == proxy_cgroup_id)
        return TC_ACT_UNSPEC;
    __u64 ck = bpf_get_socket_cookie(skb);
    if (bpf_map_lookup_elem(&packet_old, &ck))
        return TC_ACT_UNSPEC;
    if (!bpf_map_lookup_elem(&packet_reported, &ck)) {
        __u8 one = 1;
        bpf_map_update_elem(&packet_reported, &ck, &one, BPF_ANY);
        struct deny_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
        if (e) {
            __builtin_memset(e, 0, sizeof(*e));
            e->cgroup_id = cgroup_id;
            e->kind = DENY_PACKET;
            /* No process context here: userspace finds the owner by the cookie. */
            e->cookie = ck;
            e->protocol = bpf_ntohs(skb->protocol); /* the frame's EtherType */
            bpf_ringbuf_submit(e, 0);
        } else {
            count_lost();
        }
    }
    return TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "GPL";
