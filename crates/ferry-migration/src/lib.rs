//! ferry-migration
