//! ferry-image
