// Key handles for libssl: an EC P-256 private key whose signing is delegated to a callback.
//
// The process that does TLS never holds the private key. It holds the certificate's public key
// plus an opaque 32-byte handle; each signature is a callback (in ztunnel-swift, an IPC round
// trip to the process that holds the real key). This is an OpenSSL 3.0 built-in provider named
// "ztkh"; see docs/KEY_HANDLES.md (probe facts) for why it is built the way it is.
#ifndef CKEYHANDLE_H
#define CKEYHANDLE_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

/// Length of a key handle in bytes. Handles are opaque to this module.
#define CKEYHANDLE_ID_LEN 32

/// Signs `content` with the key named by `handle` (ECDSA P-256 over SHA-256 of the content);
/// writes a DER ECDSA signature into `sig` (capacity `sig_cap`, at least 72 bytes) and its length
/// into `*sig_len`. Returns 1 on success, 0 on failure (the TLS handshake then fails cleanly with
/// an OpenSSL error). `content` is libssl's whole to-be-signed buffer, unhashed: in TLS 1.3 the
/// CertificateVerify input (64 bytes 0x20, the context string, 0x00, the transcript hash), which
/// the key holder checks before it signs. Called from inside OpenSSL on the thread doing the TLS
/// handshake, possibly concurrently from several threads, and possibly on an ASYNC_JOB's small
/// stack: keep it shallow. `content` must not be logged or kept.
typedef int (*CKeyHandle_sign_fn)(void *arg, const unsigned char handle[CKEYHANDLE_ID_LEN],
                                  const unsigned char *content, size_t content_len,
                                  unsigned char *sig, size_t *sig_len, size_t sig_cap);

/// Registers the provider (name "ztkh") with the default library context, loads "default" and
/// "ztkh", and stores the callback. Call once, before any SSL_CTX is made (not thread-safe
/// against handshakes already running). Returns 1 on success, 0 on failure (OpenSSL error
/// queue set). A repeated call with the same `sign` and `arg` is a no-op returning 1; a repeated
/// call with a different callback returns 0 (the callback is never swapped under live TLS).
int CKeyHandle_install(CKeyHandle_sign_fn sign, void *arg);

/// Builds an EVP_PKEY for libssl: the public key of `cert` (must be EC P-256, uncompressed
/// point) plus the opaque handle, owned by the "ztkh" provider. Usable with
/// SSL_CTX_use_PrivateKey / SSL_use_PrivateKey and SSL_CTX_check_private_key (which compare the
/// public keys only: a wrong handle shows up at the first signature, so do a test signature).
/// Supports one-shot EVP_DigestSign with SHA-256 only (what libssl uses for CertificateVerify);
/// no verify, no export.
/// Does not call the callback. The caller owns the result (EVP_PKEY_free). NULL on failure
/// (OpenSSL error queue set). CKeyHandle_install must have succeeded first.
EVP_PKEY *CKeyHandle_make_key(X509 *cert, const unsigned char handle[CKEYHANDLE_ID_LEN]);

/// Makes every EC public key this process parses afterwards (the peer's certificate in each
/// handshake, the roots, CRL issuers) decode through libcrypto's built-in EC method instead of
/// OpenSSL 3.0's decoder framework. In 3.0, X509_PUBKEY decoding builds an OSSL_DECODER_CTX per
/// certificate, enumerating every decoder and key manager of every provider: ~110 us of a
/// certificate's ~125 us parse here, a quarter of a server handshake's CPU. The one hook 3.0
/// checks first is an ENGINE registered for the key's type, so this registers one whose only
/// method is the built-in EC method itself: the same ECDSA/ECDH code runs, keys are "legacy"
/// EC_KEYs. Key-handle keys stay with their provider (their keymgmt's type name is not "EC");
/// a context OpenSSL makes by the name "EC" (a P-256 ECDHE share) goes to the engine too, and
/// runs the same built-in code. Call once, early; idempotent. Returns 1 on success, 0 on failure
/// (error queue set); key-handle keys then no longer match their certificates' keys, so a
/// failure must stop the worker.
int CKeyHandle_decode_ec_public_keys_directly(void);

#endif
