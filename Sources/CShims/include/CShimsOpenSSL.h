// OpenSSL macros and type-safe stack accessors, as static inline functions so that only the
// binaries that call them (CertWorker, NetWorker) reference libcrypto.
#ifndef CSHIMS_OPENSSL_H
#define CSHIMS_OPENSSL_H

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

static inline int CShims_sk_GENERAL_NAME_num(void *stack) { return sk_GENERAL_NAME_num((STACK_OF(GENERAL_NAME) *)stack); }
static inline void *CShims_sk_GENERAL_NAME_value(void *stack, int index) {
    return sk_GENERAL_NAME_value((STACK_OF(GENERAL_NAME) *)stack, index);
}
static inline int CShims_ERR_GET_REASON(unsigned long code) { return ERR_GET_REASON(code); }
static inline long CShims_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_mode(ctx, mode); }
static inline long CShims_SSL_clear_mode(SSL *ssl, long mode) { return SSL_clear_mode(ssl, mode); }
static inline long CShims_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return SSL_CTX_set_min_proto_version(ctx, version);
}
static inline long CShims_SSL_CTX_add_extra_chain_cert(SSL_CTX *ctx, X509 *cert) {
    return SSL_CTX_add_extra_chain_cert(ctx, cert);
}
static inline long CShims_SSL_CTX_set1_groups_list(SSL_CTX *ctx, const char *list) {
    return SSL_CTX_set1_groups_list(ctx, list);
}
static inline unsigned long CShims_XN_FLAG_RFC2253(void) { return XN_FLAG_RFC2253; }
static inline int CShims_BIO_pending(BIO *bio) { return (int)BIO_pending(bio); }

static inline void *CShims_sk_X509_EXTENSION_new_null(void) { return sk_X509_EXTENSION_new_null(); }
static inline int CShims_sk_X509_EXTENSION_push(void *stack, X509_EXTENSION *ext) {
    return sk_X509_EXTENSION_push((STACK_OF(X509_EXTENSION) *)stack, ext);
}
static inline void CShims_sk_X509_EXTENSION_pop_free(void *stack) {
    sk_X509_EXTENSION_pop_free((STACK_OF(X509_EXTENSION) *)stack, X509_EXTENSION_free);
}
static inline int CShims_X509_REQ_add_extensions(X509_REQ *req, void *stack) {
    return X509_REQ_add_extensions(req, (STACK_OF(X509_EXTENSION) *)stack);
}
static inline void *CShims_X509_REQ_get_extensions(X509_REQ *req) { return X509_REQ_get_extensions(req); }
static inline int CShims_sk_X509_EXTENSION_num(void *stack) { return sk_X509_EXTENSION_num((STACK_OF(X509_EXTENSION) *)stack); }
static inline X509_EXTENSION *CShims_sk_X509_EXTENSION_value(void *stack, int index) {
    return sk_X509_EXTENSION_value((STACK_OF(X509_EXTENSION) *)stack, index);
}

static inline long CShims_SSL_set_tlsext_host_name(SSL *ssl, const char *name) { return SSL_set_tlsext_host_name(ssl, name); }
static inline long CShims_SSL_set_min_proto_version(SSL *ssl, int version) { return SSL_set_min_proto_version(ssl, version); }

/// ALPN on the HBONE server: select "h2" or fail the handshake (ISTIO_COMPAT §5.1).
static inline int CShims_alpn_select_h2(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                                        const unsigned char *in, unsigned int inlen, void *arg) {
    static const unsigned char h2[] = {2, 'h', '2'};
    (void)ssl; (void)arg;
    if (SSL_select_next_proto((unsigned char **)out, outlen, h2, sizeof(h2), in, inlen) != OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}
static inline void CShims_SSL_CTX_require_alpn_h2(SSL_CTX *ctx) { SSL_CTX_set_alpn_select_cb(ctx, CShims_alpn_select_h2, NULL); }
/// No resumption: no session cache, no stateless tickets, and (TLS 1.3) no NewSessionTicket
/// messages at all. 1 when all three are set, else 0 (the caller refuses the context). Without the last, a TLS 1.3 server still sends two stateful tickets per
/// handshake (each a session duplicated and a secret derived) that no client can use.
static inline long CShims_SSL_CTX_disable_session_reuse(SSL_CTX *ctx) {
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if ((SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET) & SSL_OP_NO_TICKET) == 0) return 0;
    return SSL_CTX_set_num_tickets(ctx, 0) == 1 ? 1 : 0;
}

/* A verified chain (STACK_OF(X509), leaf first) for the revocation check. */
static inline int CShims_sk_X509_num(const void *stack) { return sk_X509_num((const STACK_OF(X509) *)stack); }
static inline X509 *CShims_sk_X509_value(const void *stack, int index) { return sk_X509_value((const STACK_OF(X509) *)stack, index); }
/* A CRL's revoked entries. */
static inline int CShims_X509_CRL_revoked_count(X509_CRL *crl) {
    STACK_OF(X509_REVOKED) *revoked = X509_CRL_get_REVOKED(crl);
    return revoked == NULL ? 0 : sk_X509_REVOKED_num(revoked);
}
static inline X509_REVOKED *CShims_X509_CRL_revoked_value(X509_CRL *crl, int index) {
    STACK_OF(X509_REVOKED) *revoked = X509_CRL_get_REVOKED(crl);
    return revoked == NULL ? NULL : sk_X509_REVOKED_value(revoked, index);
}
/* Whether a CRL's issuingDistributionPoint makes it indirect or partial (-1: it does not parse). */
static inline int CShims_X509_CRL_idp_is_narrowed(const X509_CRL *crl) {
    int critical = 0;
    ISSUING_DIST_POINT *idp = X509_CRL_get_ext_d2i(crl, NID_issuing_distribution_point, &critical, NULL);
    if (idp == NULL) return critical == -1 ? 0 : -1;
    int narrowed = idp->indirectCRL || idp->onlysomereasons != NULL || idp->onlyattr;
    ISSUING_DIST_POINT_free(idp);
    return narrowed;
}

#endif
