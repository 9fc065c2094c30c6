//! HTTP handlers, one module per resource.

pub mod model;
pub mod predict;
pub mod system;
