#!/usr/bin/env bash
# Regenerates Sources/XDS/Generated/*.pb.swift from proto/*.proto (ISTIO_COMPAT §7).
# The generated code is committed: the plugin takes minutes to build, and CI need not build it.
#   scripts/gen-proto.sh        needs protoc (apt: protobuf-compiler) and builds protoc-gen-swift
#                               from swift-protobuf 1.39.0 (the version Package.swift names) once,
#                               in .build-protoc/, unless PROTOC_GEN_SWIFT points at one.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
plugin="${PROTOC_GEN_SWIFT:-}"
if [ -z "$plugin" ]; then
  src=.build-protoc/swift-protobuf
  if [ ! -x "$src/.build/release/protoc-gen-swift" ]; then
    rm -rf "$src" && mkdir -p .build-protoc
    git clone -q --branch 1.39.0 https://github.com/apple/swift-protobuf "$src"
    (cd "$src" && swift build -c release --product protoc-gen-swift)
  fi
  plugin="$src/.build/release/protoc-gen-swift"
fi
out=Sources/XDS/Generated
rm -rf "$out" && mkdir -p "$out"
protoc --plugin=protoc-gen-swift="$plugin" -I proto --swift_opt=Visibility=Public --swift_out="$out" \
  proto/workload.proto proto/authorization.proto proto/xds.proto
echo "generated: $(ls "$out")"
