// EC public keys decoded without OpenSSL 3.0's decoder framework; see CKeyHandle.h.
#define OPENSSL_SUPPRESS_DEPRECATED  // ENGINE: the only hook 3.0 offers before the decoders
#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <pthread.h>
#include "CKeyHandle.h"

static const int ec_only[] = { EVP_PKEY_EC };

// The engine's table: for EC it hands back libcrypto's own built-in EC method, so every
// operation on these keys runs the same ECDSA and ECDH code as before; for anything else it
// declines, and OpenSSL carries on as if no engine were registered.
static int builtin_ec_method(ENGINE *e, EVP_PKEY_METHOD **method, const int **nids, int nid)
{
    (void)e;
    if (method == NULL) {
        *nids = ec_only;
        return 1;
    }
    if (nid == EVP_PKEY_EC) {
        *method = (EVP_PKEY_METHOD *)EVP_PKEY_meth_find(EVP_PKEY_EC);
        return *method != NULL;
    }
    *method = NULL;
    return 0;
}

// Once per process, whichever thread asks first (the unit tests call it from parallel tests).
static int install_result;
static pthread_once_t install_once = PTHREAD_ONCE_INIT;

static void install(void)
{
    ENGINE *engine = ENGINE_new();
    if (engine == NULL)
        return;
    int ok = ENGINE_set_id(engine, "ztunnel-ec-direct")
        && ENGINE_set_name(engine, "EC public keys decoded without OSSL_DECODER")
        && ENGINE_set_pkey_meths(engine, builtin_ec_method)
        && ENGINE_add(engine)
        && ENGINE_init(engine)  // the functional reference is kept for the process's life
        && ENGINE_set_default_pkey_meths(engine);
    ENGINE_free(engine);  // the structural reference; ENGINE_add keeps its own
    install_result = ok;
}

int CKeyHandle_decode_ec_public_keys_directly(void)
{
    pthread_once(&install_once, install);
    return install_result;
}
