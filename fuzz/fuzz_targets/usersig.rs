//! Tencent UserSigs as the simulator's verifier reads them: any text is verified or refused,
//! never a panic (base64 variant, zlib, JSON, HMAC, expiry).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|sig: &str| {
    let _ = tim::usersig::decode(sig);
    let _ = tim::usersig::verify(sig, "key", 1_400_000_000, "administrator", 1_700_000_000);
});
