//! Simulators of the upstream contact centers (`ccrelay simulate`).
