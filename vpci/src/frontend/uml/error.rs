//! What goes wrong serving a UML guest. None of it ends the guest's connection: each is
//! recorded (logged, counted, kept as the status's last error) with the socket and the
//! device it happened on, and serving goes on.

use thiserror::Error;

use super::chain::{ChainError, MAX_BAR_ACCESS};
use super::ring::RingError;
use crate::frontend::virtio_pcidev::CommandError;
use crate::FunctionError;

/// Something that went wrong serving a UML guest.
#[derive(Debug, Error)]
pub enum UmlError {
    /// The command queue is not set up (yet, or any more).
    #[error("command queue: not ready")]
    QueueNotReady,
    /// The command queue's rings cannot be served.
    #[error("command queue: {0}")]
    CommandQueue(#[source] RingError),
    /// A command's descriptor chain was refused.
    #[error("refused a command chain: {0}")]
    Chain(#[source] ChainError),
    /// A chain's message is not a command.
    #[error("refused a command: {0}")]
    Command(#[source] CommandError),
    /// A read whose chain has too little room for its answer.
    #[error("{command}: the chain has {have} writable bytes for a {want}-byte answer")]
    NoRoomForAnswer {
        /// The command, as it reads in a log.
        command: String,
        /// Writable bytes in the chain.
        have: usize,
        /// Bytes the answer needs.
        want: usize,
    },
    /// A BAR access longer than any served.
    #[error("{command}: longer than the largest access served ({MAX_BAR_ACCESS} bytes)")]
    AccessTooLong {
        /// The command, as it reads in a log.
        command: String,
    },
    /// The function refused or failed a BAR access.
    #[error("{command}: {source}")]
    Access {
        /// The command, as it reads in a log.
        command: String,
        /// Why.
        #[source]
        source: FunctionError,
    },
    /// A read's answer could not be written into its chain.
    #[error("answering a read: {0}")]
    Answer(#[source] ChainError),
}
