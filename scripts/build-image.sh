#!/usr/bin/env bash
# Builds the OCI image from scratch with buildah (issue #10): the four binaries, the shared
# libraries they link (as ldd finds them, and the dynamic loader), the seccomp profiles, and
# nothing else: no shell, no package manager, no /etc beyond what the process reads.
#   scripts/build-image.sh [BIN_DIR] [IMAGE]   (defaults: .build/release, ztunnel-swift:dev)
# Writes the image to buildah's local storage and an OCI archive at .build/ztunnel-swift.oci.tar,
# and prints its size and files.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-.build/release}"
image="${2:-ztunnel-swift:dev}"
binaries=(ztunnel ztunnel-cert-worker ztunnel-net-worker ztunnel-xds-worker)
for b in "${binaries[@]}"; do
  [ -x "$bin/$b" ] || { echo "build-image: $bin/$b is missing (swift build -c release first)" >&2; exit 1; }
done

ctr=$(buildah from scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
root=$(buildah mount "$ctr")

install -d "$root/usr/local/bin" "$root/usr/local/share/ztunnel/seccomp" "$root/tmp" "$root/var/run/ztunnel" "$root/proc" "$root/dev" \
  "$root/var/run/secrets/tokens" "$root/var/run/secrets/istio" "$root/etc"
chmod 1777 "$root/tmp"
# Without their debug sections (DWARF: about 60% of a release build's bytes); the symbol tables
# stay, so a worker's crash report still names its functions.
for b in "${binaries[@]}"; do
  install -m 0755 "$bin/$b" "$root/usr/local/bin/$b"
  strip --strip-debug "$root/usr/local/bin/$b"
done
install -m 0644 security/seccomp/*.json "$root/usr/local/share/ztunnel/seccomp/"

# Every shared library the binaries load, at the path the loader looks for it (ldd's view).
libs=$(for b in "${binaries[@]}"; do ldd "$bin/$b"; done | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}' | sort -u)
for lib in $libs; do
  install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  strip --strip-debug "$root$lib"
done
# The resolver of the xDS worker and CertWorker (istiod by name) reads these; the pod's own
# /etc/resolv.conf and /etc/hosts are mounted over them by the kubelet.
: > "$root/etc/hosts"
: > "$root/etc/resolv.conf"
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
for nss in /lib/x86_64-linux-gnu/libnss_dns.so.2 /lib/x86_64-linux-gnu/libnss_files.so.2 /lib/x86_64-linux-gnu/libresolv.so.2; do
  [ -e "$nss" ] && install -D -m 0644 "$(readlink -f "$nss")" "$root$nss"
done

buildah config --entrypoint '["/usr/local/bin/ztunnel"]' --cmd '["proxy", "ztunnel"]' --workingdir / \
  --label org.opencontainers.image.title=ztunnel-swift "$ctr"
buildah unmount "$ctr" >/dev/null
buildah rmi -f "$image" >/dev/null 2>&1 || true  # the previous build of this name, not left dangling
buildah commit -q "$ctr" "$image" >/dev/null
mkdir -p .build
rm -f .build/ztunnel-swift.oci.tar
buildah push -q "$image" "oci-archive:.build/ztunnel-swift.oci.tar:$image" >/dev/null
size=$(buildah images --format '{{.Size}}' "$image" | head -1)
echo "image $image: $size; files:"
check=$(buildah from "$image")
files=$(cd "$(buildah mount "$check")" && find . -type f | sort)
buildah rm "$check" >/dev/null
echo "$files" | sed 's/^\./  /'
