//! HTTP handlers, one module per resource.

pub mod drift;
pub mod model;
pub mod predict;
pub mod system;
