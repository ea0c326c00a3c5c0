//! The window engine: no I/O, no clocks of its own and no imports from the rest of the program,
//! so every behaviour is tested (and property-tested against a batch computation) without AWS.

pub mod window;
