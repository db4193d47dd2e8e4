//! ferry-qemu
