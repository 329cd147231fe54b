#!/usr/bin/env bash
# Writes Tests/fixtures/crl/, the unit tests' fixtures and the crl fuzz target's seeds and chain:
# a root with two leaves, a CRL of that root revoking the first leaf (PEM and DER), a second root of the same name and
# another key with a CRL revoking the second leaf (which must not count for the first root's
# chains), and an intermediate CA under the root, revoked by a CRL of the root. Run again only to
# change the fixtures; the output is committed. Validity is 100 years (the check ignores CRL
# expiry, as upstream, and the tests verify no certificate's time).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
cat > ca.cnf <<'CNF'
[ca]
default_ca = ca
[ca]
dir = .
database = index.txt
new_certs_dir = .
default_md = sha256
default_crl_days = 36500
policy = any
crl_extensions = crl_ext
[crl_ext]
authorityKeyIdentifier = keyid:always
[any]
commonName = supplied
[root_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
[leaf_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
subjectAltName = URI:spiffe://cluster.local/ns/default/sa/fixture
CNF
make_ca() {  # name key subject
  openssl ecparam -name prime256v1 -genkey -noout -out "$2" 2>/dev/null
  openssl req -new -x509 -key "$2" -subj "$3" -days 36500 -extensions root_ext -config ca.cnf -out "$1" 2>/dev/null
}
issue() {  # out serial issuer-cert issuer-key subject extensions
  openssl ecparam -name prime256v1 -genkey -noout -out "$1.key" 2>/dev/null
  openssl req -new -key "$1.key" -subj "$5" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA "$3" -CAkey "$4" -set_serial "$2" -days 36500 -extfile ca.cnf -extensions "$6" -out "$1" 2>/dev/null
}
crl() {  # out ca-cert ca-key revoked-cert...
  local out=$1 cert=$2 key=$3; shift 3
  : > index.txt
  for revoked in "$@"; do
    serial=$(openssl x509 -in "$revoked" -noout -serial | cut -d= -f2)
    subject=$(openssl x509 -in "$revoked" -noout -subject -nameopt compat | sed 's/^subject=//')
    printf 'R\t21000101000000Z\t240101000000Z\t%s\tunknown\t%s\n' "$serial" "$subject" >> index.txt
  done
  openssl ca -gencrl -config ca.cnf -cert "$cert" -keyfile "$key" -out "$out" 2>/dev/null
}
make_ca root.pem root.key "/O=fixture/CN=fixture root"
make_ca other-root.pem other-root.key "/O=fixture/CN=fixture root"
issue leaf1.pem 0x1001 root.pem root.key "/CN=leaf one" leaf_ext
issue leaf2.pem 0x1002 root.pem root.key "/CN=leaf two" leaf_ext
issue intermediate.pem 0x2001 root.pem root.key "/CN=fixture intermediate" root_ext
issue leaf3.pem 0x3001 intermediate.pem intermediate.pem.key "/CN=leaf three" leaf_ext
crl root-revokes-leaf1.pem root.pem root.key leaf1.pem
crl other-root-revokes-leaf2.pem other-root.pem other-root.key leaf2.pem
crl root-revokes-intermediate.pem root.pem root.key intermediate.pem
crl root-revokes-nothing.pem root.pem root.key
openssl crl -in root-revokes-leaf1.pem -outform DER -out root-revokes-leaf1.der

out="$OLDPWD/Tests/fixtures/crl"
rm -rf "$out"
mkdir -p "$out"
for name in root other-root leaf1 leaf2 intermediate leaf3 root-revokes-leaf1 other-root-revokes-leaf2 \
            root-revokes-intermediate root-revokes-nothing; do
  cp "$name.pem" "$out/$name.pem"
done
cp root-revokes-leaf1.der "$out/root-revokes-leaf1.der"
echo "wrote $out"
