//! User-level drivers written on udriver and dma. Each driver is a module; each has a
//! runnable binary under `src/bin/`.

pub mod disk_pattern;
