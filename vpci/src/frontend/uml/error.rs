//! What goes wrong serving a UML guest. None of it ends the guest's connection: each is
//! recorded (logged, counted, kept as the status's last error) with the socket and the
//! device it happened on, and serving goes on.

use std::io;

use dma::DmaError;
use thiserror::Error;

use super::chain::{ChainError, MAX_BAR_ACCESS};
use super::ring::RingError;
use crate::frontend::virtio_pcidev::CommandError;
use crate::passthrough::PassthroughError;
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
    /// The function reported an error of its own (vector wiring, a config access).
    #[error(transparent)]
    Function(#[from] PassthroughError),
    /// UML's memory could not be mapped for the device's DMA.
    #[error("{0}")]
    GuestMemory(String),
    /// Unmapping UML's memory failed.
    #[error("unmapping the guest's memory: {0}")]
    Unmap(#[source] DmaError),
    /// Quiescing the device failed.
    #[error("quiescing the device: {0}")]
    Quiesce(#[source] PassthroughError),
    /// The function could not be rebuilt for the next guest; it is gone.
    #[error("rebuilding the function for the next guest: {0}")]
    Rebuild(#[source] PassthroughError),
    /// The guest's vectors could not be watched on the worker's epoll.
    #[error("watching the guest's vectors: {0}")]
    WatchVectors(#[source] io::Error),
    /// Interrupt messages could not be delivered on the irq queue.
    #[error("delivering interrupts: {0}")]
    DeliverInterrupts(#[source] io::Error),
    /// The worker could not signal itself to serve the commands a round left.
    #[error("signalling the worker to serve the commands left: {0}")]
    Resume(#[source] nix::Error),
}
