//! TLSSigAPIv2 UserSigs: signing (the relay's admin sig) and verifying (the simulator).
