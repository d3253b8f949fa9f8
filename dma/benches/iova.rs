//! IOVA allocation and scatter-gather mapping costs.
//!
//! 1. `iova_alloc_free`: one pseudo-random sequence of allocations and frees (sizes 4 KiB
//!    to 1 MiB, some 64 KiB-aligned, a steady working set of live ranges) run against
//!    `IovaAllocator` and against rust-vmm's `vm-allocator` 0.1 `AddressAllocator`.
//!    After criterion's runs, the ratio is measured directly and printed.
//! 2. `map_sg_64_pages`: `map_sg` + `unmap_sg` of a 64-page list, contiguous and
//!    scattered, per page (no coalescing), strict and batched, on a mapper that only
//!    counts calls; the calls per request are printed.
//! 3. `strict_single_pages`: the rig's `dma_map_sg` workload (256 one-page requests
//!    mapped, then unmapped) on that mapper: the strict policy's own cost.
//!
//! Run with `cargo bench -p dma --bench iova -- --quick`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use dma::{
    BatchConfig, BatchedPolicy, DmaAccess, DmaError, DmaMapper, DmaMapping, DmaPolicy,
    GuestMemoryRegion, GuestPhysAddr, GuestSgList, HostVirtAddr, Iova, IovaAllocator, IovaRange,
    RawMemory, StrictPolicy,
};
use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};

const PAGE: u64 = 4096;
/// The allocator window: the rig's upper usable range, 4 GiB to 512 GiB.
const BASE: u64 = 1 << 32;
const SIZE: u64 = (1 << 39) - (1 << 32);

#[derive(Clone, Copy, Debug)]
enum Op {
    Alloc {
        size: u64,
        align: u64,
    },
    /// Free the live allocation at this index (modulo the live count).
    Free(usize),
}

/// xorshift64*: deterministic, so both allocators see the same sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `ops` operations keeping about `live` ranges allocated.
fn sequence(live: usize, ops: usize) -> Vec<Op> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ live as u64);
    let mut count = 0usize;
    (0..ops)
        .map(|_| {
            let r = rng.next();
            if count < live / 2 || (count < live * 2 && r.is_multiple_of(2)) {
                count += 1;
                // Mostly small: 1..=256 pages on a log scale.
                let pages = 1u64 << (rng.next() % 9);
                let align = if rng.next().is_multiple_of(8) {
                    16 * PAGE
                } else {
                    PAGE
                };
                Op::Alloc {
                    size: pages * PAGE,
                    align,
                }
            } else {
                count -= 1;
                Op::Free(rng.next() as usize)
            }
        })
        .collect()
}

fn run_ours(ops: &[Op]) -> usize {
    let a = IovaAllocator::new(&[IovaRange::new(Iova(BASE), SIZE).unwrap()]).unwrap();
    let mut live: Vec<IovaRange> = Vec::with_capacity(ops.len());
    for op in ops {
        match *op {
            Op::Alloc { size, align } => live.push(a.alloc(size, align).unwrap()),
            Op::Free(i) => {
                let r = live.swap_remove(i % live.len());
                a.free(r).unwrap();
            }
        }
    }
    live.len()
}

fn run_vm_allocator(ops: &[Op]) -> usize {
    let mut a = AddressAllocator::new(BASE, SIZE).unwrap();
    let mut live: Vec<RangeInclusive> = Vec::with_capacity(ops.len());
    for op in ops {
        match *op {
            Op::Alloc { size, align } => {
                live.push(a.allocate(size, align, AllocPolicy::FirstMatch).unwrap())
            }
            Op::Free(i) => {
                let r = live.swap_remove(i % live.len());
                a.free(&r).unwrap();
            }
        }
    }
    live.len()
}

const WORKING_SETS: [usize; 3] = [64, 512, 4096];
const OPS: usize = 20_000;

fn bench_iova(c: &mut Criterion) {
    let mut group = c.benchmark_group("iova_alloc_free");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(300));
    for live in WORKING_SETS {
        let ops = sequence(live, OPS);
        group.bench_with_input(BenchmarkId::new("IovaAllocator", live), &ops, |b, ops| {
            b.iter(|| black_box(run_ours(ops)))
        });
        group.bench_with_input(BenchmarkId::new("vm-allocator", live), &ops, |b, ops| {
            b.iter(|| black_box(run_vm_allocator(ops)))
        });
    }
    group.finish();
}

/// Best wall-clock time of each of two workloads over `rounds` interleaved runs; the
/// minimum and the interleaving keep load from other processes out of the ratio.
fn best_of_interleaved(
    rounds: usize,
    a: impl Fn() -> usize,
    b: impl Fn() -> usize,
) -> (Duration, Duration) {
    let time = |f: &dyn Fn() -> usize| {
        let t = Instant::now();
        black_box(f());
        t.elapsed()
    };
    (0..rounds).fold((Duration::MAX, Duration::MAX), |(best_a, best_b), _| {
        (best_a.min(time(&a)), best_b.min(time(&b)))
    })
}

fn report_iova_ratio() {
    const ROUNDS: usize = 11;
    println!("\nIOVA alloc+free, {OPS} ops per run, same sequence, best of {ROUNDS} interleaved:");
    println!(
        "{:>12} {:>14} {:>14} {:>8}",
        "working set", "IovaAllocator", "vm-allocator", "ratio"
    );
    for live in WORKING_SETS {
        let ops = sequence(live, OPS);
        let (ours, theirs) =
            best_of_interleaved(ROUNDS, || run_ours(&ops), || run_vm_allocator(&ops));
        println!(
            "{live:>12} {:>11.0} ns {:>11.0} ns {:>7.1}x",
            ours.as_nanos() as f64 / OPS as f64,
            theirs.as_nanos() as f64 / OPS as f64,
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    }
}

/// Counts calls and does nothing else, so the policy's own cost is what is measured.
#[derive(Default)]
struct CountingMapper {
    maps: AtomicU64,
    unmaps: AtomicU64,
}

impl DmaMapper for CountingMapper {
    unsafe fn map(&self, _mapping: &DmaMapping) -> Result<(), DmaError> {
        self.maps.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn unmap(&self, range: IovaRange) -> Result<u64, DmaError> {
        self.unmaps.fetch_add(1, Ordering::Relaxed);
        Ok(range.len())
    }
}

const HOST: u64 = 0x7f00_0000_0000;
const RAM: u64 = 64 << 20;

fn allocator() -> Arc<IovaAllocator> {
    Arc::new(IovaAllocator::new(&[IovaRange::new(Iova(BASE), SIZE).unwrap()]).unwrap())
}

fn ram() -> GuestMemoryRegion {
    // SAFETY: the counting mapper behind every policy here never touches, pins or hands
    // on a host address, so no memory needs to be there.
    let fake = unsafe { RawMemory::new(HostVirtAddr(HOST), RAM) };
    GuestMemoryRegion::new(GuestPhysAddr(0), Arc::new(fake))
}

/// Maps each page on its own, as a policy without coalescing would.
struct PerPage {
    mapper: Arc<CountingMapper>,
    iovas: Arc<IovaAllocator>,
}

impl PerPage {
    fn map_unmap(&self, sg: &GuestSgList) {
        let mut ranges = Vec::with_capacity(64);
        for page in sg.pages(PAGE) {
            let r = self.iovas.alloc(PAGE, PAGE).unwrap();
            let m = DmaMapping::new(
                r.start(),
                HostVirtAddr(HOST + page.0),
                PAGE,
                DmaAccess::ReadWrite,
            )
            .unwrap();
            // SAFETY: the counting mapper only counts; no memory needs to be there.
            unsafe { self.mapper.map(&m) }.unwrap();
            ranges.push(r);
        }
        for r in ranges {
            self.mapper.unmap(r).unwrap();
            self.iovas.free(r).unwrap();
        }
    }
}

fn lists() -> [(&'static str, GuestSgList); 2] {
    let contiguous =
        GuestSgList::from_pieces((0..64).map(|i| (GuestPhysAddr(0x10_0000 + i * PAGE), PAGE)))
            .unwrap();
    let scattered =
        GuestSgList::from_pieces((0..64).map(|i| (GuestPhysAddr(0x10_0000 + i * 2 * PAGE), PAGE)))
            .unwrap();
    [("contiguous", contiguous), ("scattered", scattered)]
}

fn strict() -> (Arc<CountingMapper>, StrictPolicy<Arc<CountingMapper>>) {
    let mapper = Arc::new(CountingMapper::default());
    let policy = StrictPolicy::new(mapper.clone(), allocator());
    policy.add_region(ram()).unwrap();
    (mapper, policy)
}

fn batched() -> (Arc<CountingMapper>, BatchedPolicy<Arc<CountingMapper>>) {
    let mapper = Arc::new(CountingMapper::default());
    let policy = BatchedPolicy::new(
        mapper.clone(),
        allocator(),
        BatchConfig {
            max_pending: 32,
            max_delay: Duration::from_secs(1),
        },
    );
    policy.add_region(ram()).unwrap();
    (mapper, policy)
}

fn bench_map_sg(c: &mut Criterion) {
    let mut group = c.benchmark_group("map_sg_64_pages");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(1));
    group.warm_up_time(Duration::from_millis(300));
    for (name, sg) in lists() {
        let per_page = PerPage {
            mapper: Arc::new(CountingMapper::default()),
            iovas: allocator(),
        };
        group.bench_with_input(BenchmarkId::new("per-page", name), &sg, |b, sg| {
            b.iter(|| per_page.map_unmap(sg))
        });
        let (_, s) = strict();
        group.bench_with_input(BenchmarkId::new("strict", name), &sg, |b, sg| {
            b.iter(|| {
                let bus = s.map_sg(sg, DmaAccess::ReadWrite).unwrap();
                s.unmap_sg(&bus).unwrap();
            })
        });
        let (_, p) = batched();
        group.bench_with_input(BenchmarkId::new("batched", name), &sg, |b, sg| {
            b.iter(|| {
                let bus = p.map_sg(sg, DmaAccess::ReadWrite).unwrap();
                p.unmap_sg(&bus).unwrap();
            })
        });
    }
    group.finish();
}

/// As the rig's `dma_map_sg` bench: `SINGLE_PAGES` one-page requests (every other
/// page), all mapped, then all unmapped, strict, on a mapper that only counts calls:
/// the policy's own CPU cost per request.
fn bench_single_pages(c: &mut Criterion) {
    const SINGLE_PAGES: u64 = 256;
    let requests: Vec<GuestSgList> = (0..SINGLE_PAGES)
        .map(|i| GuestSgList::from_pieces([(GuestPhysAddr(2 * i * PAGE), PAGE)]).unwrap())
        .collect();
    let (_, s) = strict();
    let mut bus = Vec::with_capacity(requests.len());
    let mut group = c.benchmark_group("strict_single_pages");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(1));
    group.warm_up_time(Duration::from_millis(300));
    group.throughput(criterion::Throughput::Elements(SINGLE_PAGES));
    group.bench_function(BenchmarkId::new("map_sg+unmap_sg", SINGLE_PAGES), |b| {
        b.iter(|| {
            for sg in &requests {
                bus.push(s.map_sg(sg, DmaAccess::DeviceReads).unwrap());
            }
            for list in bus.drain(..) {
                s.unmap_sg(&list).unwrap();
            }
        })
    });
    group.finish();
}

fn report_map_sg_calls() {
    const REQUESTS: u64 = 1024;
    println!("\nmapper calls per 64-page map_sg + unmap_sg, averaged over {REQUESTS} requests:");
    println!(
        "{:>11} {:>10} {:>10} {:>10}",
        "list", "policy", "maps", "unmaps"
    );
    for (name, sg) in lists() {
        let per_page = PerPage {
            mapper: Arc::new(CountingMapper::default()),
            iovas: allocator(),
        };
        let (sm, s) = strict();
        let (bm, b) = batched();
        for _ in 0..REQUESTS {
            per_page.map_unmap(&sg);
            let bus = s.map_sg(&sg, DmaAccess::ReadWrite).unwrap();
            s.unmap_sg(&bus).unwrap();
            let bus = b.map_sg(&sg, DmaAccess::ReadWrite).unwrap();
            b.unmap_sg(&bus).unwrap();
        }
        b.flush().unwrap();
        for (policy, m) in [
            ("per-page", &per_page.mapper),
            ("strict", &sm),
            ("batched", &bm),
        ] {
            println!(
                "{name:>11} {policy:>10} {:>10.2} {:>10.3}",
                m.maps.load(Ordering::Relaxed) as f64 / REQUESTS as f64,
                m.unmaps.load(Ordering::Relaxed) as f64 / REQUESTS as f64
            );
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_iova(&mut c);
    bench_map_sg(&mut c);
    bench_single_pages(&mut c);
    c.final_summary();
    report_iova_ratio();
    report_map_sg_calls();
}
