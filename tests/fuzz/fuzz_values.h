#ifndef WD_FUZZ_VALUES_H
#define WD_FUZZ_VALUES_H

/* Fixed values shared by the fuzz targets and fuzz_seedgen, so that seeds
 * stay valid: a clock that never moves, a device key, a JWT issuer. */

#include <stdint.h>

#define FZ_NOW_S INT64_C(1700000000)

#define FZ_SAS_HOSTNAME "hub.example.com"
#define FZ_SAS_DEVICE "dev-1"
static const uint8_t fz_sas_key[32] = {0x5a, 0x17, 0x03, 0xc4, 0x9e, 0x21, 0x6b, 0x88, 0x0f, 0xd2, 0x44,
                                       0x71, 0xa9, 0x3e, 0x12, 0xbb, 0x60, 0x05, 0xfe, 0x2d, 0x97, 0x4c,
                                       0x38, 0xe1, 0x0a, 0x56, 0xcf, 0x83, 0x19, 0x7d, 0xb4, 0x22};

#define FZ_JWT_ISSUER "https://issuer.example"
#define FZ_JWT_AUDIENCE "warden"

/* A P-256 key made for these tests only (openssl ecparam -genkey), never used elsewhere. */
static const char fz_jwt_public_pem[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEMc63XpImDvL5ec79UxZWW/HtZfFM\n"
    "J//Kz1SAOGCWmhtZ7dyvEq/nl4fsQMHgAKbKj1t0XPvFpd81eSpf2X3wWg==\n"
    "-----END PUBLIC KEY-----\n";

#endif
