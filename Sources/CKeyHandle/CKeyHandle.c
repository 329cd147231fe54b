// OpenSSL 3.0 built-in provider "ztkh": an EC P-256 private key that is only a handle.
//
// libssl sees an ordinary EC key (its keymgmt is EC-named, so EVP_PKEY_is_a(key, "EC") holds and
// the certificate type is recognised). The key data is the public point plus a 32-byte handle;
// signing hands the unhashed to-be-signed content (the TLS 1.3 CertificateVerify input) to the
// app's callback, whose key holder checks its shape, hashes it with SHA-256 and signs. The entry points are the minimal set libssl 3.0 needs (docs/KEY_HANDLES.md).
#include "CKeyHandle.h"

#include <string.h>
#include <strings.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/provider.h>

#define KH_PROV_NAME "ztkh"
#define KH_PARAM_HANDLE "kh-handle" /* octet string, CKEYHANDLE_ID_LEN bytes */
#define KH_PUB_LEN 65               /* uncompressed P-256 point: 04 || X || Y */
#define KH_EC_NAME "ZTKH-EC"         /* our keymgmt's own name, beside the EC ones */
#define KH_SIG_MAX 72               /* DER ECDSA-Sig-Value for P-256, worst case */

/* Written once by CKeyHandle_install before any SSL_CTX exists, then only read. */
static CKeyHandle_sign_fn kh_sign_cb;
static void *kh_sign_arg;
static EVP_MD *kh_sha256; /* SHA-256 from the default provider, fetched once */
static OSSL_PROVIDER *kh_default_prov, *kh_self_prov; /* held for the life of the process */
static int kh_installed;

typedef struct {
    unsigned char pub[KH_PUB_LEN];
    unsigned char handle[CKEYHANDLE_ID_LEN];
    int has_pub, has_handle;
} kh_key;

typedef struct {
    kh_key *key; /* borrowed from the EVP_PKEY, which outlives the signing context */
} kh_sigctx;

static int kh_is_p256(const char *group)
{
    return group != NULL && (strcasecmp(group, "prime256v1") == 0
                             || strcasecmp(group, "P-256") == 0
                             || strcasecmp(group, "secp256r1") == 0);
}

/* ---- keymgmt ---------------------------------------------------------------------------- */

static void *kh_new(void *provctx)
{
    (void)provctx;
    return OPENSSL_zalloc(sizeof(kh_key));
}

static void kh_free(void *keydata)
{
    OPENSSL_clear_free(keydata, sizeof(kh_key)); /* the handle is a capability: wipe it */
}

/* SSL_CTX_use_PrivateKey asks HAS(public); signing needs the handle, so report it honestly. */
static int kh_has(const void *keydata, int selection)
{
    const kh_key *key = keydata;

    if (key == NULL)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_KEYPAIR) == 0)
        return 1; /* domain parameters only: always P-256 */
    if ((selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) != 0 && !key->has_pub)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 && !key->has_handle)
        return 0;
    return 1;
}

/* X509_check_private_key (SSL_CTX_check_private_key) imports the certificate's key into this
   keymgmt and calls MATCH; without MATCH it would need EXPORT, which we do not offer. */
static int kh_match(const void *a, const void *b, int selection)
{
    const kh_key *k1 = a, *k2 = b;

    if ((selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) != 0)
        return k1->has_pub && k2->has_pub && memcmp(k1->pub, k2->pub, KH_PUB_LEN) == 0;
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0)
        return k1->has_handle && k2->has_handle
               && CRYPTO_memcmp(k1->handle, k2->handle, CKEYHANDLE_ID_LEN) == 0;
    return 1; /* domain parameters: both P-256 by construction */
}

/* IMPORT is how the key is built (EVP_PKEY_fromdata in CKeyHandle_make_key) and how
   X509_check_private_key brings in the certificate's public key. */
static int kh_import(void *keydata, int selection, const OSSL_PARAM params[])
{
    kh_key *key = keydata;
    const OSSL_PARAM *p;
    const char *group = NULL;
    const void *data = NULL;
    size_t len = 0;

    if (key == NULL || (selection & OSSL_KEYMGMT_SELECT_KEYPAIR) == 0)
        return 0;
    p = OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_GROUP_NAME);
    if (p == NULL || !OSSL_PARAM_get_utf8_string_ptr(p, &group) || !kh_is_p256(group))
        return 0;
    p = OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_PUB_KEY);
    if (p == NULL || !OSSL_PARAM_get_octet_string_ptr(p, &data, &len)
        || len != KH_PUB_LEN || ((const unsigned char *)data)[0] != 0x04)
        return 0;
    memcpy(key->pub, data, KH_PUB_LEN);
    key->has_pub = 1;
    p = OSSL_PARAM_locate_const(params, KH_PARAM_HANDLE);
    if (p != NULL && (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0) {
        if (!OSSL_PARAM_get_octet_string_ptr(p, &data, &len) || len != CKEYHANDLE_ID_LEN)
            return 0;
        memcpy(key->handle, data, CKEYHANDLE_ID_LEN);
        key->has_handle = 1;
    }
    return 1;
}

static const OSSL_PARAM kh_import_params[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_octet_string(KH_PARAM_HANDLE, NULL, 0),
    OSSL_PARAM_END
};

static const OSSL_PARAM *kh_import_types(int selection)
{
    (void)selection;
    return kh_import_params;
}

/* EVP caches bits/security-bits/max-size when the key is made; libssl reads "group" to allow
   ecdsa_secp256r1_sha256 in TLS 1.3 (without GET_PARAMS: "unsupported protocol"). */
static int kh_get_params(void *keydata, OSSL_PARAM params[])
{
    OSSL_PARAM *p;

    (void)keydata; /* every answer is fixed by the curve */
    if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_BITS)) != NULL && !OSSL_PARAM_set_int(p, 256))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_SECURITY_BITS)) != NULL
        && !OSSL_PARAM_set_int(p, 128))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_MAX_SIZE)) != NULL
        && !OSSL_PARAM_set_int(p, KH_SIG_MAX))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_GROUP_NAME)) != NULL
        && !OSSL_PARAM_set_utf8_string(p, "prime256v1"))
        return 0;
    return 1;
}

static const OSSL_PARAM kh_gettable_params[] = {
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
    OSSL_PARAM_END
};

static const OSSL_PARAM *kh_gettable(void *provctx)
{
    (void)provctx;
    return kh_gettable_params;
}

/* Sends signing to our "KH-ECDSA" rather than the name "ECDSA", which the default provider also
   owns: a generic "ECDSA" fetch would pick the default's and try to export our key to it. */
static const char *kh_query_operation_name(int operation_id)
{
    return operation_id == OSSL_OP_SIGNATURE ? "KH-ECDSA" : NULL;
}

static const OSSL_DISPATCH kh_keymgmt_functions[] = {
    { OSSL_FUNC_KEYMGMT_NEW, (void (*)(void))kh_new },
    { OSSL_FUNC_KEYMGMT_FREE, (void (*)(void))kh_free },
    { OSSL_FUNC_KEYMGMT_HAS, (void (*)(void))kh_has },
    { OSSL_FUNC_KEYMGMT_MATCH, (void (*)(void))kh_match },
    { OSSL_FUNC_KEYMGMT_IMPORT, (void (*)(void))kh_import },
    { OSSL_FUNC_KEYMGMT_IMPORT_TYPES, (void (*)(void))kh_import_types },
    { OSSL_FUNC_KEYMGMT_GET_PARAMS, (void (*)(void))kh_get_params },
    { OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, (void (*)(void))kh_gettable },
    { OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, (void (*)(void))kh_query_operation_name },
    { 0, NULL }
};

/* ---- signature -------------------------------------------------------------------------- */

static void *kh_sig_newctx(void *provctx, const char *propq)
{
    (void)provctx;
    (void)propq;
    return OPENSSL_zalloc(sizeof(kh_sigctx));
}

static void kh_sig_freectx(void *ctx)
{
    OPENSSL_free(ctx);
}

/* libssl also calls this to probe which digests the key supports while choosing a sigalg
   (EVP_PKEY_digestsign_supports_digest), so it must stay cheap and never call the callback. */
static int kh_digest_sign_init(void *vctx, const char *mdname, void *provkey,
                               const OSSL_PARAM params[])
{
    kh_sigctx *ctx = vctx;

    (void)params;
    if (provkey != NULL)
        ctx->key = provkey;
    if (ctx->key == NULL || !ctx->key->has_handle) {
        ERR_raise_data(ERR_LIB_PROV, ERR_R_PASSED_INVALID_ARGUMENT, KH_PROV_NAME ": key has no handle");
        return 0;
    }
    if (mdname != NULL && mdname[0] != '\0' && !EVP_MD_is_a(kh_sha256, mdname)) {
        ERR_raise_data(ERR_LIB_PROV, ERR_R_UNSUPPORTED, KH_PROV_NAME ": only SHA-256 is supported");
        return 0;
    }
    return 1;
}

/* One-shot EVP_DigestSign, which libssl uses for CertificateVerify. sig == NULL asks for the
   maximum size. The content is handed to the callback unhashed: in TLS 1.3 it is the
   CertificateVerify input of RFC 8446 §4.4.3, whose shape the key holder checks before it hashes
   and signs, so a compromised caller cannot use the handle as a general-purpose signer.
   Deliberately shallow: it may run on an ASYNC_JOB's small stack. */
static int kh_digest_sign(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize,
                          const unsigned char *tbs, size_t tbslen)
{
    kh_sigctx *ctx = vctx;
    size_t len = 0;
    int ok;

    if (sig == NULL) {
        *siglen = KH_SIG_MAX;
        return 1;
    }
    if (ctx->key == NULL || !ctx->key->has_handle)
        return 0;
    ok = kh_sign_cb(kh_sign_arg, ctx->key->handle, tbs, tbslen, sig, &len, sigsize) == 1
         && len > 0 && len <= sigsize;
    if (!ok) {
        ERR_raise_data(ERR_LIB_PROV, ERR_R_OPERATION_FAIL, KH_PROV_NAME ": signing callback failed");
        return 0;
    }
    *siglen = len;
    return 1;
}

static const OSSL_DISPATCH kh_signature_functions[] = {
    { OSSL_FUNC_SIGNATURE_NEWCTX, (void (*)(void))kh_sig_newctx },
    { OSSL_FUNC_SIGNATURE_FREECTX, (void (*)(void))kh_sig_freectx },
    { OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, (void (*)(void))kh_digest_sign_init },
    { OSSL_FUNC_SIGNATURE_DIGEST_SIGN, (void (*)(void))kh_digest_sign },
    { 0, NULL }
};

/* ---- provider --------------------------------------------------------------------------- */

/* The keymgmt must carry the EC names: libssl classifies the key with EVP_PKEY_is_a. KH_EC_NAME
   comes first because the first name is the keymgmt's type name, which OpenSSL 3.0 maps to a
   NID when it makes a context for one of our keys: "EC" would send the context to an ENGINE
   registered for EC (CKeyHandle_decode_ec_public_keys_directly), which would try to export the
   handle to a legacy EC_KEY and fail; an unknown name keeps it with this provider. */
static const OSSL_ALGORITHM kh_keymgmt_algs[] = {
    { KH_EC_NAME ":EC:id-ecPublicKey:1.2.840.10045.2.1", "provider=" KH_PROV_NAME, kh_keymgmt_functions,
      "P-256 key whose private half is a handle" },
    { NULL, NULL, NULL, NULL }
};

static const OSSL_ALGORITHM kh_signature_algs[] = {
    { "KH-ECDSA", "provider=" KH_PROV_NAME, kh_signature_functions, "ECDSA via callback" },
    { NULL, NULL, NULL, NULL }
};

static const OSSL_ALGORITHM *kh_query_operation(void *provctx, int operation_id, int *no_cache)
{
    (void)provctx;
    *no_cache = 0;
    switch (operation_id) {
    case OSSL_OP_KEYMGMT:
        return kh_keymgmt_algs;
    case OSSL_OP_SIGNATURE:
        return kh_signature_algs;
    default:
        return NULL; /* everything else comes from the default provider */
    }
}

static const OSSL_DISPATCH kh_provider_functions[] = {
    { OSSL_FUNC_PROVIDER_QUERY_OPERATION, (void (*)(void))kh_query_operation },
    { 0, NULL }
};

static int kh_provider_init(const OSSL_CORE_HANDLE *core, const OSSL_DISPATCH *in,
                            const OSSL_DISPATCH **out, void **provctx)
{
    static int kh_provctx; /* no per-provider state; libcrypto only needs a non-NULL pointer */

    (void)core;
    (void)in;
    *out = kh_provider_functions;
    *provctx = &kh_provctx;
    return 1;
}

/* ---- public API ------------------------------------------------------------------------- */

int CKeyHandle_install(CKeyHandle_sign_fn sign, void *arg)
{
    if (sign == NULL) {
        ERR_raise(ERR_LIB_PROV, ERR_R_PASSED_NULL_PARAMETER);
        return 0;
    }
    if (kh_installed)
        return sign == kh_sign_cb && arg == kh_sign_arg;
    kh_sign_cb = sign;
    kh_sign_arg = arg;
    /* Loading any provider explicitly turns off the implicit "default" one, so load it too.
       Both stay loaded for the life of the process; make_key and signing rely on them. */
    if (!OSSL_PROVIDER_add_builtin(NULL, KH_PROV_NAME, kh_provider_init)
        || (kh_default_prov = OSSL_PROVIDER_load(NULL, "default")) == NULL
        || (kh_self_prov = OSSL_PROVIDER_load(NULL, KH_PROV_NAME)) == NULL
        || (kh_sha256 = EVP_MD_fetch(NULL, "SHA2-256", "provider=default")) == NULL)
        return 0;
    kh_installed = 1;
    return 1;
}

/* The point as the certificate encodes it. Not EVP_PKEY_get_octet_string_param(PUB_KEY): for an
   EC key decoded the legacy way (CKeyHandle_decode_ec_public_keys_directly) that answers the
   compressed form. */
static int kh_certificate_point(X509 *cert, unsigned char point[KH_PUB_LEN], size_t *point_len)
{
    const ASN1_BIT_STRING *bits = X509_get0_pubkey_bitstr(cert);
    if (bits == NULL || ASN1_STRING_length(bits) != KH_PUB_LEN)
        return 0;
    const unsigned char *data = ASN1_STRING_get0_data(bits);
    if (data[0] != 0x04)
        return 0;
    memcpy(point, data, KH_PUB_LEN);
    *point_len = KH_PUB_LEN;
    return 1;
}

EVP_PKEY *CKeyHandle_make_key(X509 *cert, const unsigned char handle[CKEYHANDLE_ID_LEN])
{
    EVP_PKEY *pub, *key = NULL;
    EVP_PKEY_CTX *pctx = NULL;
    char group[32];
    unsigned char point[KH_PUB_LEN], id[CKEYHANDLE_ID_LEN];
    size_t group_len = 0, point_len = 0;
    OSSL_PARAM params[4];
    const OSSL_PROVIDER *owner;

    if (!kh_installed || cert == NULL || handle == NULL) {
        ERR_raise(ERR_LIB_PROV, ERR_R_PASSED_INVALID_ARGUMENT);
        return NULL;
    }
    pub = X509_get0_pubkey(cert);
    if (pub == NULL || !EVP_PKEY_is_a(pub, "EC")
        || !EVP_PKEY_get_utf8_string_param(pub, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                           &group_len)
        || !kh_is_p256(group)
        || !kh_certificate_point(cert, point, &point_len)) {
        ERR_raise_data(ERR_LIB_PROV, ERR_R_UNSUPPORTED,
                       KH_PROV_NAME ": certificate key is not an uncompressed EC P-256 key");
        return NULL;
    }
    memcpy(id, handle, sizeof(id));
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point, point_len);
    params[2] = OSSL_PARAM_construct_octet_string(KH_PARAM_HANDLE, id, sizeof(id));
    params[3] = OSSL_PARAM_construct_end();
    /* The propq pins the import to our keymgmt. Without it the default EC keymgmt would take
       the import, drop "kh-handle" silently and build a public-only key. The name is our own,
       not "EC": OpenSSL 3.0 maps "EC" to its NID first and, with an ENGINE registered for EC
       (CKeyHandle_decode_ec_public_keys_directly), makes a legacy context that cannot import. */
    pctx = EVP_PKEY_CTX_new_from_name(NULL, KH_EC_NAME, "provider=" KH_PROV_NAME);
    if (pctx == NULL || EVP_PKEY_fromdata_init(pctx) <= 0
        || EVP_PKEY_fromdata(pctx, &key, EVP_PKEY_KEYPAIR, params) <= 0)
        key = NULL;
    OPENSSL_cleanse(id, sizeof(id));
    EVP_PKEY_CTX_free(pctx);
    /* Belt and braces for the same pitfall: refuse a key that is not ours. */
    owner = key != NULL ? EVP_PKEY_get0_provider(key) : NULL;
    if (key != NULL && owner != kh_self_prov) {
        EVP_PKEY_free(key);
        key = NULL;
        ERR_raise_data(ERR_LIB_PROV, ERR_R_INTERNAL_ERROR, KH_PROV_NAME ": key not held by provider");
    }
    return key;
}
