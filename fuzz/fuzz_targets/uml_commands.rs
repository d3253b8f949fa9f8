//! UML's command path as the vring worker runs it: `CommandQueue::serve` walks the split
//! ring in guest memory, gathers each chain, parses the virtio-pcidev message and
//! executes it on a passthrough function over a fake e1000e or ich9-ahci, publishing
//! answers and used entries. The input lays out the rings (or takes the usual layout),
//! writes guest memory, posts chains, and serves rounds in between, as a guest and the
//! worker would.
//!
//! Oracles: no panic; a round serves at most `COMMANDS_PER_ROUND` commands and says it
//! left some only when it served that many; a served round takes exactly the commands
//! it counts and publishes no more used entries than that; a queue whose rings overlap
//! or leave guest memory is refused and nothing moves; the worker's buffers stay under
//! their documented bound; the device is never reached out of range and its own BARs,
//! decode enables and MSI/MSI-X registers never change; at most 4 MiB live per input
//! (an answer is at most `MAX_BAR_ACCESS`), at most 16 rounds and 512 operations.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use udrv_fuzz::fake_passthrough::{protected_bytes, served_function, CheckedDevice};
use udrv_fuzz::{bounded, Input};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vpci::frontend::uml::{CommandQueue, COMMANDS_PER_ROUND, MAX_BAR_ACCESS, MAX_MESSAGE};
use vpci::PassthroughFunction;

const MAX_LIVE_BYTES: usize = 4 << 20;
const MEMORY: u64 = 0x1_0000;
const MAX_ROUNDS: usize = 16;
const MAX_OPS: usize = 512;
/// The usual layout: descriptors, avail ring, used ring; buffers after them.
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const BUFFERS: u64 = 0x3000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

fuzz_target!(|data: &[u8]| bounded(MAX_LIVE_BYTES, || run(data)));

/// The guest's side: its memory, its queue, and where it posts next.
struct Guest {
    mem: GuestMemoryMmap,
    queue: Queue,
    next_desc: u16,
    posted: u16,
    next_buffer: u64,
}

struct Served {
    function: PassthroughFunction<Arc<CheckedDevice>>,
    device: Arc<CheckedDevice>,
    commands: CommandQueue,
    protected: Vec<u8>,
    msi: Vec<(usize, usize)>,
    rounds: usize,
}

fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let (device, function, msi) = served_function(flags & 1 != 0);
    let mut served = Served {
        protected: protected_bytes(&device.0, &msi),
        function,
        device,
        commands: CommandQueue::new(),
        msi,
        rounds: 0,
    };

    let size = 1u16 << (input.u8() % 9);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY as usize)])
        .expect("guest memory maps");
    let Ok(mut queue) = Queue::new(size) else {
        return;
    };
    let (desc, avail, used) = if flags & 2 == 0 {
        (DESC, AVAIL, USED)
    } else {
        // Anywhere, overlapping or not, inside or not.
        let mut address = || u64::from(input.u32()) % (MEMORY + 0x1000);
        (address(), address(), address())
    };
    queue.set_desc_table_address(Some(desc as u32), Some(0));
    queue.set_avail_ring_address(Some(avail as u32), Some(0));
    queue.set_used_ring_address(Some(used as u32), Some(0));
    if flags & 4 != 0 {
        queue.set_next_avail(input.u16());
        queue.set_next_used(input.u16());
    }
    queue.set_ready(true);
    let mut guest = Guest {
        mem,
        queue,
        next_desc: 0,
        posted: 0,
        next_buffer: BUFFERS,
    };

    for _ in 0..MAX_OPS {
        if input.is_empty() || served.rounds == MAX_ROUNDS {
            break;
        }
        match input.u8() % 4 {
            0 => {
                // Any bytes anywhere in guest memory.
                let at = u64::from(input.u16());
                let len = usize::from(input.u8());
                let bytes = input.bytes(len);
                let fit = bytes.len().min((MEMORY - at) as usize);
                let _ = guest.mem.write_slice(&bytes[..fit], GuestAddress(at));
            }
            1 | 2 => {
                // A chain as UML posts it: the message, then maybe a writable answer.
                let len = usize::from(input.u8());
                let message = input.bytes(len).to_vec();
                let answer = input
                    .bool()
                    .then(|| (u64::from(input.u16()), u32::from(input.u16())));
                guest.post(&message, answer);
            }
            _ => {
                served.round(&mut guest);
            }
        }
    }
    // The worker serves what is left, round after round, as it would.
    while served.rounds < MAX_ROUNDS && served.round(&mut guest) {}
}

impl Guest {
    fn post(&mut self, message: &[u8], answer: Option<(u64, u32)>) {
        let size = self.queue.size();
        let at = self.next_buffer;
        if at + message.len() as u64 > MEMORY {
            self.next_buffer = BUFFERS;
            return;
        }
        let _ = self.mem.write_slice(message, GuestAddress(at));
        self.next_buffer += message.len().max(1).next_multiple_of(16) as u64;
        let head = self.next_desc % size;
        let mut descs = vec![(at, message.len() as u32, 0)];
        descs.extend(answer.map(|(addr, len)| (addr, len, F_WRITE)));
        let desc_table = self.queue.desc_table();
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = self.next_desc % size;
            self.next_desc = self.next_desc.wrapping_add(1);
            let more = if i + 1 < descs.len() { F_NEXT } else { 0 };
            let d = GuestAddress(desc_table + u64::from(index) * 16);
            let _ = self.mem.write_obj(addr, d);
            let _ = self.mem.write_obj(len, d.unchecked_add(8));
            let _ = self.mem.write_obj(flags | more, d.unchecked_add(12));
            let _ = self.mem.write_obj((index + 1) % size, d.unchecked_add(14));
        }
        let avail = self.queue.avail_ring();
        let slot = avail + 4 + u64::from(self.posted % size) * 2;
        let _ = self.mem.write_obj(head, GuestAddress(slot));
        self.posted = self.posted.wrapping_add(1);
        let _ = self.mem.write_obj(self.posted, GuestAddress(avail + 2));
    }
}

/// The three ring areas of `queue`, if they lie in memory apart from each other.
fn rings_apart(queue: &Queue) -> bool {
    let n = u64::from(queue.size());
    let areas = [
        (queue.desc_table(), n * 16),
        (queue.avail_ring(), 4 + n * 2),
        (queue.used_ring(), 4 + n * 8),
    ];
    let inside = areas.iter().all(|&(at, len)| at + len <= MEMORY);
    let apart = [(0, 1), (0, 2), (1, 2)].iter().all(|&(i, j)| {
        let ((a, a_len), (b, b_len)) = (areas[i], areas[j]);
        a + a_len <= b || b + b_len <= a
    });
    inside && apart
}

impl Served {
    /// One round; whether it left commands waiting.
    fn round(&mut self, guest: &mut Guest) -> bool {
        self.rounds += 1;
        let (avail_before, used_before) = (guest.queue.next_avail(), guest.queue.next_used());
        let result = self
            .commands
            .serve(&mut self.function, &mut guest.queue, &guest.mem);
        let left = match result {
            Ok(round) => {
                assert!(
                    rings_apart(&guest.queue),
                    "served rings that overlap or leave memory"
                );
                assert!(
                    round.commands <= COMMANDS_PER_ROUND,
                    "{} commands in a round",
                    round.commands
                );
                if round.left {
                    assert_eq!(round.commands, COMMANDS_PER_ROUND);
                }
                assert_eq!(round.taken, guest.queue.next_avail());
                let taken = guest.queue.next_avail().wrapping_sub(avail_before);
                assert_eq!(u64::from(taken), round.commands, "taken vs counted");
                let published = guest.queue.next_used().wrapping_sub(used_before);
                assert!(
                    u64::from(published) <= round.commands,
                    "more used entries than commands"
                );
                assert!(round.refused <= round.commands);
                round.left
            }
            Err(_) => {
                assert_eq!(
                    guest.queue.next_avail(),
                    avail_before,
                    "a refused queue moved"
                );
                assert_eq!(
                    guest.queue.next_used(),
                    used_before,
                    "a refused queue moved"
                );
                false
            }
        };
        let bound = 2 * (MAX_MESSAGE + MAX_BAR_ACCESS) + 16 * usize::from(guest.queue.size());
        assert!(
            self.commands.buffered_bytes() < bound,
            "{} bytes buffered, bound {bound}",
            self.commands.buffered_bytes()
        );
        let now = protected_bytes(&self.device.0, &self.msi);
        assert_eq!(
            now, self.protected,
            "the device's own registers were written"
        );
        left
    }
}
