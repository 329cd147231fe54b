#!/usr/bin/env bash
# Builds and runs every fuzz target with libFuzzer and AddressSanitizer.
#   Fuzz/run.sh SECONDS   runs each target for SECONDS (make test: 20, make fuzz: FUZZ_SECONDS)
# Each parser of bytes from outside (a peer, the network, a file an operator or attacker may
# control) has a target; a crash, a sanitizer report or a broken invariant fails the run and
# leaves the input in .build-fuzz/artifacts/. Seeds are in Fuzz/seeds/<target>/ (the IPC seeds are
# written by Fuzz/seeds.py); the corpus grows in .build-fuzz/corpus/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
out=.build-fuzz
mkdir -p "$out/artifacts"

# Pure parsers (no imports) are compiled straight from their sources with a harness of their own.
declare -A sources=(
  [request_target]="Sources/NetWorker/RequestTarget.swift"
  [socks5]="Sources/NetWorker/Socks5Parser.swift"
  [local_config]="$(ls Sources/Mesh/*.swift | tr '\n' ' ')"
  [ca_response]="Sources/CertWorker/CAResponse.swift Sources/CertWorker/CAProtobuf.swift"
  [ip_address]="Sources/Mesh/IPAddress.swift"
  [connect_authority]="Sources/NetWorker/ConnectAuthority.swift Sources/Mesh/Baggage.swift Sources/Mesh/Workload.swift Sources/Mesh/IPAddress.swift"
  [metrics_merge]="Sources/NetWorker/MetricsMerge.swift"
  [grpc_framer]="Sources/HTTP2Client/GRPCFramer.swift"
  [zds]="Sources/Supervisor/ZDSMessages.swift Sources/Shared/ProtobufWire.swift"
  [dns]="Sources/NetWorker/DNSMessage.swift Sources/Shared/ResolvConf.swift"
)
for target in "${!sources[@]}"; do
  # shellcheck disable=SC2086
  swiftc -parse-as-library -sanitize=fuzzer,address -O ${sources[$target]} "Fuzz/targets/$target.swift" \
    -o "$out/fuzz_$target" 2> >(grep -v "Cannot export local symbol" >&2)
done

# The IPC decoders live in a module with C dependencies: built through the Fuzz/ package.
fuzzer_no_main=$(ls /opt/swift/usr/lib/clang/*/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a 2>/dev/null \
  || ls "$(dirname "$(command -v swift)")"/../lib/clang/*/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a)
(cd Fuzz && swift build -q --scratch-path ../$out/spm --product IPCFuzz \
  -Xswiftc -sanitize=address -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp \
  -Xlinker "$fuzzer_no_main" -Xlinker -lstdc++ 2> >(grep -v "Cannot export local symbol" >&2))
cp "$out/spm/debug/IPCFuzz" "$out/fuzz_ipc"
# The xDS decoders (swift-protobuf's generated code and our conversion), likewise; the Mesh model
# they feed is instrumented too, and XDS with it.
(cd Fuzz && swift build -q --scratch-path ../$out/spm --product XDSFuzz \
  -Xswiftc -sanitize=address -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp \
  -Xlinker "$fuzzer_no_main" -Xlinker -lstdc++ 2> >(grep -v "Cannot export local symbol" >&2))
cp "$out/spm/debug/XDSFuzz" "$out/fuzz_xds"
# CRL_PATH's parser (OpenSSL underneath, not instrumented; our Swift around it is).
(cd Fuzz && swift build -q --scratch-path ../$out/spm --product CRLFuzz \
  -Xswiftc -sanitize=address -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp \
  -Xlinker "$fuzzer_no_main" -Xlinker -lstdc++ 2> >(grep -v "Cannot export local symbol" >&2))
cp "$out/spm/debug/CRLFuzz" "$out/fuzz_crl"
python3 Fuzz/seeds_xds.py "$out/seeds-xds"
python3 Fuzz/seeds.py "$out/seeds-ipc"

status=0
passed=0
failed=0
summary=()
for target in ipc xds crl request_target socks5 local_config ca_response ip_address connect_authority metrics_merge grpc_framer zds dns; do
  corpus="$out/corpus/$target"
  mkdir -p "$corpus"
  seeds="Fuzz/seeds/$target"
  [ "$target" = ipc ] && seeds="$out/seeds-ipc"
  [ "$target" = xds ] && seeds="$out/seeds-xds"
  [ "$target" = crl ] && seeds="Tests/fixtures/crl"
  log="$out/$target.log"
  if SWIFT_BACKTRACE=enable=no "$out/fuzz_$target" -max_total_time="$seconds" -print_final_stats=1 \
       -artifact_prefix="$out/artifacts/$target-" "$corpus" "$seeds" > "$log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    summary+=("fuzz $target: $runs executions in ${seconds}s, no finding")
    passed=$((passed + 1))
  else
    status=1
    failed=$((failed + 1))
    summary+=("fuzz $target: FAILED (see $log and $out/artifacts/)")
    tail -40 "$log"
  fi
done
printf '%s\n' "${summary[@]}"
echo "fuzz: $passed passed, $failed failed"
exit $status
