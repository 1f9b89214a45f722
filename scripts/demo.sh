#!/usr/bin/env bash
# A self-contained demonstration of egressd on a machine without internet.
# A network namespace plays the internet (198.51.100.0/24, a documentation
# range): a DNS server and two HTTPS servers, allowed.demo.test and
# denied.demo.test. `egressd exec` runs curl under the demo policy; you see
# what was allowed, what was denied and why. Everything is removed afterwards.
# Needs root (network namespace, cgroup, eBPF).
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "demo.sh: needs root (network namespace, cgroup, eBPF): sudo $0" >&2; exit 1; }
for t in ip openssl python3 curl; do
  command -v "$t" >/dev/null || { echo "demo.sh: $t is missing; run scripts/install-deps.sh" >&2; exit 1; }
done

ns="egressd-demo-$$"
host_if="egd$$h"; ns_if="egd$$n"
work=$(mktemp -d /tmp/egressd-demo.XXXXXX)
cleanup() {
  ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$host_if" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "==> building egressd"
cargo build -q -p egressd
bin=${CARGO_TARGET_DIR:-$PWD/target}/debug/egressd

echo "==> the demo internet: namespace $ns, 198.51.100.0/24"
ip netns add "$ns"
ip link add "$host_if" type veth peer name "$ns_if"
ip link set "$ns_if" netns "$ns"
ip addr add 198.51.100.1/24 dev "$host_if"
ip link set "$host_if" up
ip -n "$ns" link set lo up
ip -n "$ns" link set "$ns_if" up
for a in 2 10 11 53; do ip -n "$ns" addr add "198.51.100.$a/32" dev "$ns_if"; done
ip -n "$ns" route add 198.51.100.0/24 dev "$ns_if"
# Never let a demo packet take the default route.
for a in 10 11 53; do
  ip route get "198.51.100.$a" | grep -q "dev $host_if" || { echo "demo.sh: no route to 198.51.100.$a via $host_if" >&2; exit 1; }
done

openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=egressd demo CA" \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
for name in allowed denied; do
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$name.demo.test" -keyout "$work/$name.key" -out "$work/$name.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s.demo.test\n' "$name" > "$work/$name.ext"
  openssl x509 -req -in "$work/$name.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -days 1 -extfile "$work/$name.ext" -out "$work/$name.pem" 2>/dev/null
done
ip netns exec "$ns" python3 scripts/demo_dns.py 198.51.100.53:53 \
  allowed.demo.test=198.51.100.10 denied.demo.test=198.51.100.11 &
ip netns exec "$ns" openssl s_server -quiet -accept 198.51.100.10:443 -cert "$work/allowed.pem" -key "$work/allowed.key" -www >/dev/null 2>&1 &
ip netns exec "$ns" openssl s_server -quiet -accept 198.51.100.11:443 -cert "$work/denied.pem" -key "$work/denied.key" -www >/dev/null 2>&1 &
sleep 1

cat > "$work/policy.yaml" <<'POLICY'
version: 1
mode: enforce
allow:
  - host: allowed.demo.test
    ports: [443]
POLICY
# The job resolves through the demo DNS server even if redirection failed.
echo "nameserver 198.51.100.53" > "$work/resolv.conf"

echo "==> egressd exec: curl allowed.demo.test, denied.demo.test, and an IP with a forged name"
set +e
"$bin" exec --policy "$work/policy.yaml" --dns-upstream 198.51.100.53:53 --audit-dir "$work/audit" -- \
  unshare --mount sh -c "mount --bind '$work/resolv.conf' /etc/resolv.conf
    echo '--- curl https://allowed.demo.test/'
    curl -sS -o /dev/null -w 'HTTP %{http_code}\n' --max-time 5 --cacert '$work/ca.pem' https://allowed.demo.test/
    echo '--- curl https://denied.demo.test/'
    curl -sS -o /dev/null -w 'HTTP %{http_code}\n' --max-time 5 --cacert '$work/ca.pem' https://denied.demo.test/
    echo '--- curl https://allowed.demo.test/ forced to 198.51.100.11 (sni_ip_mismatch)'
    curl -sS -o /dev/null -w 'HTTP %{http_code}\n' --max-time 5 --cacert '$work/ca.pem' --resolve allowed.demo.test:443:198.51.100.11 https://allowed.demo.test/
    exit 0"
rc=$?
set -e
echo "==> the audit records"
"$bin" audit export --dir "$work/audit" --format csv
exit $rc
