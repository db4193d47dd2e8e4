//! ferry-qmp
