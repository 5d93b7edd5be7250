//! How replicas reach each other: an in-process [`Router`] (tests, benches) and a TCP
//! transport ([`tcp`]).

mod memory;
pub mod tcp;

pub use memory::{Router, RouterNetwork};
pub use tcp::TcpNetwork;
