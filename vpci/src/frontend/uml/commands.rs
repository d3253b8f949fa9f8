//! The command batch: one round of UML's command queue, served on the passthrough
//! function.
//!
//! A round walks the avail ring from the commands taken so far ([`ring`]), gathers
//! each chain into one message and its writable part ([`chain`]), parses the message
//! ([`virtio_pcidev::parse`]), serves it on the function and publishes the chain as
//! used, its answer (reads) in its writable part. Whatever is refused — a broken chain,
//! a message that is no command, an access outside its BAR or longer than
//! [`MAX_BAR_ACCESS`] — is answered all-ones (as UML reads a failed access), recorded
//! in the round's errors, and the round goes on. A round serves at most
//! [`COMMANDS_PER_ROUND`] commands and says when it left some.
//!
//! [`CommandQueue`] is that round exactly as the vring worker runs it, public so that
//! a fuzzer drives this code rather than a copy of it.
//!
//! [`ring`]: super::ring
//! [`chain`]: super::chain

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::chain::{self, Writable, MAX_BAR_ACCESS};
use super::error::UmlError;
use super::ring::Ring;
use crate::frontend::virtio_pcidev::{self, Command};
use crate::function::check_bar_access;
use crate::passthrough::{PassthroughDevice, PassthroughFunction};
use crate::{AccessWidth, BarIndex, FunctionError, PciFunction};

/// Most commands served in one round, holding the lock on the served function. The
/// rest wait for the next round, after whatever else the worker has to do: a guest
/// that keeps posting (or a ring laid out so that answers post commands) cannot keep a
/// departure, a reset or a stop waiting.
pub const COMMANDS_PER_ROUND: u64 = 256;

/// What one round did.
#[derive(Debug, Default)]
pub struct Round {
    /// Commands taken from the queue, served or refused.
    pub commands: u64,
    /// Config reads and writes served.
    pub config: u64,
    /// BAR reads (refused ones too).
    pub reads: u64,
    /// BAR writes and memsets (refused ones too).
    pub writes: u64,
    /// Commands refused: a broken chain, no command, no room for the answer.
    pub refused: u64,
    /// The round was full and commands were left waiting for the next.
    pub left: bool,
    /// The queue's next avail index after the round: every command before it is taken.
    pub taken: u16,
    /// What went wrong, in order (each also answered or skipped as said above).
    pub errors: Vec<UmlError>,
    /// Time in the function's BAR accesses, if the round was timed.
    pub bar_access: Duration,
    timed: bool,
}

/// How the worker runs a round besides what [`CommandQueue::serve`] does.
#[derive(Default)]
pub(super) struct RoundOptions<'a> {
    /// The polling window's view of the ring, used if it is still `queue`'s.
    pub(super) ring: Option<&'a Ring<'a>>,
    /// Time the BAR accesses.
    pub(super) timed: bool,
    /// Count each command here before its answer is published (so whoever sees the
    /// answer sees the count).
    pub(super) polled: Option<&'a AtomicU64>,
    /// Record each error here as it happens, before the answer of its command is
    /// published, instead of keeping it in [`Round::errors`].
    pub(super) report: Option<&'a dyn Fn(UmlError)>,
}

impl RoundOptions<'_> {
    /// Hand the errors so far to `report`, if errors are reported.
    fn report(&self, round: &mut Round) {
        if let Some(report) = self.report {
            round.errors.drain(..).for_each(report);
        }
    }
}

/// UML's command queue as a worker serves it: the buffers its rounds reuse, so that
/// serving a command allocates nothing once they have grown to the largest one seen
/// (at most [`MAX_MESSAGE`] for a message and [`MAX_BAR_ACCESS`] for an answer).
#[derive(Debug, Default)]
pub struct CommandQueue {
    readable: Vec<u8>,
    writable: Writable,
    reply: Vec<u8>,
}

impl CommandQueue {
    /// A queue with empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve one round of the commands UML posted on `queue`, whose rings and buffers
    /// lie in `mem`, on `function`; `queue`'s next avail and used indices move past
    /// what was served. `Err` if the queue cannot be served at all: not ready, or its
    /// rings refused (overlapping, outside `mem`).
    pub fn serve<D: PassthroughDevice + 'static>(
        &mut self,
        function: &mut PassthroughFunction<D>,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Round, UmlError> {
        self.serve_round(function, queue, mem, RoundOptions::default())
    }

    /// Bytes the reusable buffers hold now: they grow with the largest command seen,
    /// a message to [`MAX_MESSAGE`](super::MAX_MESSAGE), an answer to [`MAX_BAR_ACCESS`] (each at most
    /// twice that in capacity) and 16 bytes per writable descriptor of the longest
    /// chain (no longer than the queue).
    pub fn buffered_bytes(&self) -> usize {
        self.readable.capacity() + self.reply.capacity() + self.writable.buffered_bytes()
    }

    /// [`serve`](Self::serve) as the worker runs it.
    pub(super) fn serve_round<D: PassthroughDevice + 'static>(
        &mut self,
        function: &mut PassthroughFunction<D>,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        options: RoundOptions<'_>,
    ) -> Result<Round, UmlError> {
        if !queue.ready() {
            return Err(UmlError::QueueNotReady);
        }
        let built;
        let ring = match options.ring.filter(|ring| ring.is_of(queue)) {
            Some(ring) => ring,
            None => {
                built = Ring::new(queue, mem).map_err(UmlError::CommandQueue)?;
                &built
            }
        };
        let mut round = Round {
            timed: options.timed,
            ..Round::default()
        };
        let (mut taken, mut used) = (queue.next_avail(), queue.next_used());
        'ring: loop {
            let waiting = match ring.waiting(taken) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    round.errors.push(UmlError::CommandQueue(e));
                    options.report(&mut round);
                    break;
                }
            };
            for _ in 0..waiting {
                if round.commands == COMMANDS_PER_ROUND {
                    round.left = true;
                    break 'ring;
                }
                let head = ring.head(taken);
                taken = taken.wrapping_add(1);
                round.commands += 1;
                let written = self.serve_chain(function, ring, head, mem, &mut round);
                if let Some(polled) = options.polled {
                    polled.fetch_add(1, Relaxed);
                }
                options.report(&mut round);
                if let Err(e) = ring.put_used(used, head, written as u32) {
                    round.errors.push(UmlError::CommandQueue(e));
                    options.report(&mut round);
                    break 'ring;
                }
                used = used.wrapping_add(1);
            }
        }
        queue.set_next_avail(taken);
        queue.set_next_used(used);
        round.taken = taken;
        Ok(round)
    }

    /// Gather, parse and serve the chain at `head`; returns the bytes written into its
    /// writable part.
    fn serve_chain<D: PassthroughDevice + 'static>(
        &mut self,
        function: &mut PassthroughFunction<D>,
        ring: &Ring<'_>,
        head: u16,
        mem: &GuestMemoryMmap,
        round: &mut Round,
    ) -> usize {
        let command = chain::gather(
            ring.chain(head),
            mem,
            &mut self.readable,
            &mut self.writable,
        )
        .map_err(UmlError::Chain)
        .and_then(|()| virtio_pcidev::parse(&self.readable).map_err(UmlError::Command));
        match command {
            Ok(command) => execute(
                function,
                command,
                &self.writable,
                mem,
                &mut self.reply,
                round,
            ),
            Err(why) => {
                round.refused += 1;
                round.errors.push(why);
                self.writable
                    .fill(mem, 0xff, MAX_BAR_ACCESS, &mut self.reply)
            }
        }
    }
}

/// Serve `command`; returns the bytes written into the chain's writable part.
fn execute<D: PassthroughDevice + 'static>(
    function: &mut PassthroughFunction<D>,
    command: Command<'_>,
    writable: &Writable,
    mem: &GuestMemoryMmap,
    reply: &mut Vec<u8>,
    round: &mut Round,
) -> usize {
    let want = command.reply_len();
    if want > writable.len() {
        round.refused += 1;
        round.errors.push(UmlError::NoRoomForAnswer {
            command: command.to_string(),
            have: writable.len(),
            want,
        });
        return writable.fill(mem, 0xff, want, reply);
    }
    let access_error = |source| UmlError::Access {
        command: command.to_string(),
        source,
    };
    match command {
        Command::ConfigRead { offset, size } => {
            round.config += 1;
            let value = config_read(function, offset, size.bytes());
            write_reply(writable, mem, &value.to_le_bytes()[..size.bytes()], round)
        }
        Command::ConfigWrite {
            offset,
            size,
            value,
        } => {
            round.config += 1;
            config_write(function, offset, size.bytes(), value);
            0
        }
        Command::MmioRead { bar, offset, len } => {
            round.reads += 1;
            // Before anything is allocated for it: the length is the guest's.
            if let Err(e) = check_access(function, &command, bar, offset, len) {
                round.errors.push(e);
                return writable.fill(mem, 0xff, want, reply);
            }
            reply.clear();
            reply.resize(len as usize, 0);
            let started = round.timed.then(Instant::now);
            let result = function.bar_read(bar, offset, reply);
            round.bar_access += started.map_or(Duration::ZERO, |s| s.elapsed());
            if let Err(e) = result {
                round.errors.push(access_error(e));
                reply.fill(0xff);
            }
            write_reply(writable, mem, reply, round)
        }
        Command::MmioWrite { bar, offset, data } => {
            round.writes += 1;
            let started = round.timed.then(Instant::now);
            let result = function.bar_write(bar, offset, data);
            round.bar_access += started.map_or(Duration::ZERO, |s| s.elapsed());
            if let Err(e) = result {
                round.errors.push(access_error(e));
            }
            0
        }
        Command::MmioMemset {
            bar,
            offset,
            len,
            value,
        } => {
            round.writes += 1;
            if let Err(e) = check_access(function, &command, bar, offset, len) {
                round.errors.push(e);
                return 0;
            }
            reply.clear();
            reply.resize(len as usize, value);
            if let Err(e) = function.bar_write(bar, offset, reply) {
                round.errors.push(access_error(e));
            }
            0
        }
    }
}

/// Whether a read or memset of `len` bytes at `offset` in `bar` is one to serve:
/// inside the BAR (checked as the function's BAR access checks it) and no longer than
/// [`MAX_BAR_ACCESS`].
fn check_access<D: PassthroughDevice + 'static>(
    function: &PassthroughFunction<D>,
    command: &Command<'_>,
    bar: BarIndex,
    offset: u64,
    len: u32,
) -> Result<(), UmlError> {
    let len = len as usize;
    if len > MAX_BAR_ACCESS {
        return Err(UmlError::AccessTooLong {
            command: command.to_string(),
        });
    }
    function
        .bar_layout()
        .get(bar)
        .map(|d| d.size)
        .ok_or(FunctionError::NoSuchBar { bar })
        .and_then(|size| check_bar_access(bar, offset, len, size))
        .map_err(|source| UmlError::Access {
            command: command.to_string(),
            source,
        })
}

fn write_reply(
    writable: &Writable,
    mem: &GuestMemoryMmap,
    bytes: &[u8],
    round: &mut Round,
) -> usize {
    writable.write(mem, bytes).unwrap_or_else(|e| {
        round.errors.push(UmlError::Answer(e));
        0
    })
}

/// A config read of 1, 2, 4 or 8 bytes (8 as two dwords, as a PCI host bridge does).
fn config_read<F: PciFunction>(function: &mut F, offset: u16, len: usize) -> u64 {
    match AccessWidth::from_len(len) {
        Some(width) => function.config_read(offset, width).into(),
        None => {
            let low = function.config_read(offset, AccessWidth::Dword);
            let high = function.config_read(offset + 4, AccessWidth::Dword);
            u64::from(low) | u64::from(high) << 32
        }
    }
}

fn config_write<F: PciFunction>(function: &mut F, offset: u16, len: usize, value: u64) {
    match AccessWidth::from_len(len) {
        Some(width) => function.config_write(offset, width, value as u32),
        None => {
            function.config_write(offset, AccessWidth::Dword, value as u32);
            function.config_write(offset + 4, AccessWidth::Dword, (value >> 32) as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Address, Bytes, GuestAddress};

    use super::*;
    use crate::frontend::uml::{RingError, MAX_MESSAGE};
    use crate::frontend::virtio_pcidev::{op, Header};
    use crate::passthrough::fake_device::FakeDevice;
    use crate::passthrough::tests::e1000e;

    const SIZE: u16 = 16;
    const DESC: u64 = 0;
    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;
    /// `VRING_DESC_F_NEXT`, `VRING_DESC_F_WRITE`.
    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    /// UML's memory and command queue, as a fuzzer sets them up.
    struct Guest {
        mem: GuestMemoryMmap,
        queue: Queue,
        next_desc: u16,
        posted: u16,
        next_buffer: u64,
    }

    impl Guest {
        fn new() -> Self {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            let mut queue = Queue::new(SIZE).unwrap();
            queue.set_desc_table_address(Some(DESC as u32), Some(0));
            queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
            queue.set_used_ring_address(Some(USED as u32), Some(0));
            queue.set_ready(true);
            Self {
                mem,
                queue,
                next_desc: 0,
                posted: 0,
                next_buffer: 0x3000,
            }
        }

        /// Post a command: `message` and, for an answer, a writable buffer at `answer`
        /// of `len` bytes (as the guest's descriptor says, wherever it points).
        fn post(&mut self, message: &[u8], answer: Option<(u64, u32)>) {
            let at = self.next_buffer;
            self.mem.write_slice(message, GuestAddress(at)).unwrap();
            self.next_buffer += 0x100;
            let head = self.next_desc;
            let mut descs = vec![(at, message.len() as u32, 0)];
            descs.extend(answer.map(|(addr, len)| (addr, len, F_WRITE)));
            for (i, &(addr, len, flags)) in descs.iter().enumerate() {
                let index = self.next_desc;
                self.next_desc += 1;
                let more = if i + 1 < descs.len() { F_NEXT } else { 0 };
                let d = GuestAddress(DESC + u64::from(index) * 16);
                self.mem.write_obj(addr, d).unwrap();
                self.mem.write_obj(len, d.unchecked_add(8)).unwrap();
                self.mem
                    .write_obj(flags | more, d.unchecked_add(12))
                    .unwrap();
                self.mem.write_obj(index + 1, d.unchecked_add(14)).unwrap();
            }
            let slot = AVAIL + 4 + u64::from(self.posted % SIZE) * 2;
            self.mem.write_obj(head, GuestAddress(slot)).unwrap();
            self.posted += 1;
            self.mem
                .write_obj(self.posted, GuestAddress(AVAIL + 2))
                .unwrap();
        }
    }

    fn message(op: u8, bar: u8, size: u32, addr: u64, data: &[u8]) -> Vec<u8> {
        let header = Header {
            op,
            bar,
            reserved: 0,
            size,
            addr,
        };
        [&header.encode()[..], data].concat()
    }

    fn function() -> PassthroughFunction<FakeDevice> {
        PassthroughFunction::new(e1000e()).unwrap()
    }

    #[test]
    fn a_round_serves_posted_commands_and_publishes_their_answers() {
        let mut guest = Guest::new();
        let mut function = function();
        guest.post(&message(op::CFG_READ, 0, 4, 0, &[]), Some((0x8000, 4)));
        guest.post(&message(op::MMIO_READ, 0, 4, 8, &[]), Some((0x8010, 4)));
        let round = CommandQueue::new()
            .serve(&mut function, &mut guest.queue, &guest.mem)
            .unwrap();
        assert_eq!((round.commands, round.config, round.reads), (2, 1, 1));
        assert!(round.errors.is_empty(), "{:?}", round.errors);
        assert_eq!((round.taken, round.left), (2, false));
        let answer = |at| guest.mem.read_obj::<u32>(GuestAddress(at)).unwrap();
        assert_eq!((answer(0x8000), answer(0x8010)), (0x10d3_8086, 0x8008_0783));
        assert_eq!(
            guest.mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(),
            2
        );
        assert_eq!(guest.queue.next_used(), 2);
    }

    #[test]
    fn long_bar_accesses_are_refused_before_anything_is_allocated_for_them() {
        let mut guest = Guest::new();
        let mut function = function();
        let mut commands = CommandQueue::new();
        // A read of 16 MiB from the 128 KiB BAR0, the guest's descriptor offering
        // 16 MiB for the answer: all-ones, as much as UML may read.
        guest.post(
            &message(op::MMIO_READ, 0, 16 << 20, 0, &[]),
            Some((0x1_0000, 16 << 20)),
        );
        // A memset of the whole 1 MiB BAR4.
        guest.post(&message(op::MMIO_MEMSET, 4, 0x10_0000, 0, &[0]), None);
        let bar4 = function.device().region_bytes(4, 0, 0x10_0000);
        let round = commands
            .serve(&mut function, &mut guest.queue, &guest.mem)
            .unwrap();
        assert_eq!((round.commands, round.reads, round.writes), (2, 1, 1));
        assert_eq!(round.errors.len(), 2);
        assert!(round
            .errors
            .iter()
            .all(|e| matches!(e, UmlError::AccessTooLong { .. })));
        let mut answer = vec![0; MAX_BAR_ACCESS + 1];
        guest
            .mem
            .read_slice(&mut answer, GuestAddress(0x1_0000))
            .unwrap();
        assert!(answer[..MAX_BAR_ACCESS].iter().all(|b| *b == 0xff));
        assert_eq!(
            answer[MAX_BAR_ACCESS], 0,
            "more than MAX_BAR_ACCESS answered"
        );
        assert_eq!(function.device().region_bytes(4, 0, 0x10_0000), bar4);
        // Nothing was allocated for either.
        assert!(
            commands.buffered_bytes() < 2 * (MAX_MESSAGE + MAX_BAR_ACCESS),
            "{}",
            commands.buffered_bytes()
        );
    }

    #[test]
    fn a_ring_laid_over_itself_is_not_served() {
        let mut guest = Guest::new();
        guest.post(&message(op::CFG_READ, 0, 4, 0, &[]), Some((0x8000, 4)));
        guest
            .queue
            .set_used_ring_address(Some(AVAIL as u32), Some(0));
        let result = CommandQueue::new().serve(&mut function(), &mut guest.queue, &guest.mem);
        assert!(
            matches!(
                result,
                Err(UmlError::CommandQueue(RingError::Overlap { .. }))
            ),
            "{result:?}"
        );
        assert_eq!(guest.queue.next_avail(), 0);
    }
}
