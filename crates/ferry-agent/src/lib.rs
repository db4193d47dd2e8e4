//! ferry-agent
