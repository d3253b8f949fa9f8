//! One client's session: each checked command applied to the passthrough function,
//! the DMA table and the device's interrupts, and its reply built.
//!
//! [`Session::handle`] takes a message as it came off the socket (header, payload,
//! fds) and returns what to send back; it never blocks on the socket and never
//! panics on what a client sends, so tests and fuzzers drive it with no socket at all.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dma::DmaMapper;
use nix::errno::Errno;

use super::derived_intx::{DerivedIntx, DerivedIntxState};
use super::dma::{DmaLimits, DmaTable, DmaTableState};
use super::irqs;
use super::protocol::{
    dma_flags, parse_request, reply_header, server_capabilities, Command, Header, Payload, Refusal,
    Reply, Request, VERSION_MAJOR, VERSION_MINOR,
};
use super::regions::{self, RegionId, NUM_REGIONS};
use super::status::{bump, Counters, VfioUserStatus};
use crate::handover::{FdBag, HandoverError};
use crate::passthrough::{FunctionState, PassthroughDevice, PassthroughError, PassthroughFunction};
use udriver::vfio::IrqIndex;

/// `VFIO_DEVICE_FLAGS_RESET`, `VFIO_DEVICE_FLAGS_PCI`.
const DEVICE_FLAGS_RESET: u32 = 1 << 0;
const DEVICE_FLAGS_PCI: u32 = 1 << 1;

/// What to do after a message.
#[derive(Debug)]
pub enum Outcome {
    /// Send this reply and read the next message.
    Reply(Header, Reply),
    /// Nothing to send (the client asked for no reply).
    Nothing,
    /// Send this reply, if any, and close the connection.
    Disconnect(Option<(Header, Reply)>),
}

/// A session's options.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Offer the VFIO device fd for the BARs' mmap-able parts (see the module docs of
    /// [`vfio_user`](super)).
    pub direct_mmio: bool,
    /// Where DMA mappings may go.
    pub dma_limits: DmaLimits,
}

/// A [`Session`] carried to a successor process (`udrv serve`'s upgrade): the
/// client's connection goes on where it was.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SessionState {
    function: FunctionState,
    dma: DmaTableState,
    intx: DerivedIntxState,
    negotiated: bool,
    write_multiple: bool,
}

/// One client's session with a passthrough function.
pub struct Session<D: PassthroughDevice + 'static> {
    /// `None` only after a reset whose rebuild failed: the device is gone and the
    /// session ends.
    function: Option<PassthroughFunction<D>>,
    dma: DmaTable,
    counters: Arc<Counters>,
    direct_mmio: bool,
    negotiated: bool,
    write_multiple: bool,
    /// The INTx udrv raises itself, for a function that derives it.
    intx: DerivedIntx,
}

impl<D: PassthroughDevice + 'static> Session<D> {
    /// A session over `function`, whose DMA goes through `mapper` (the device's
    /// IOMMU container). The function's own interrupt wiring is switched off: the
    /// client wires the device's vectors to its eventfds.
    pub fn new(
        function: PassthroughFunction<D>,
        mapper: Arc<dyn DmaMapper>,
        options: SessionOptions,
    ) -> Result<Self, PassthroughError> {
        Self::with_counters(function, mapper, options, Arc::default())
    }

    pub(super) fn with_counters(
        mut function: PassthroughFunction<D>,
        mapper: Arc<dyn DmaMapper>,
        options: SessionOptions,
        counters: Arc<Counters>,
    ) -> Result<Self, PassthroughError> {
        function.hand_interrupts_to_client()?;
        Ok(Session {
            function: Some(function),
            dma: DmaTable::new(mapper, options.dma_limits),
            counters,
            direct_mmio: options.direct_mmio,
            negotiated: false,
            write_multiple: false,
            intx: DerivedIntx::default(),
        })
    }

    /// Gives the session up to a successor between two messages, as it is: its
    /// DMA mappings stay in the IOMMU, the client's interrupts stay wired, the
    /// device is not touched. Returns the state and the device.
    pub fn hand_over(mut self, bag: &mut FdBag) -> Result<(SessionState, D), HandoverError> {
        let function = self.function.take().ok_or_else(|| {
            HandoverError::Malformed("the device was lost in a failed reset".into())
        })?;
        let state = SessionState {
            function: function.handover_state()?,
            dma: self.dma.hand_over(bag),
            intx: std::mem::take(&mut self.intx).hand_over(bag),
            negotiated: self.negotiated,
            write_multiple: self.write_multiple,
        };
        Ok((state, function.into_device()))
    }

    /// The session a predecessor handed over, over the same device and container.
    pub(super) fn resume(
        device: D,
        mapper: Arc<dyn DmaMapper>,
        options: SessionOptions,
        counters: Arc<Counters>,
        state: &SessionState,
        bag: &mut FdBag,
    ) -> Result<Self, HandoverError> {
        let function = PassthroughFunction::resume(device, &state.function)?;
        Ok(Session {
            function: Some(function),
            dma: DmaTable::resume(mapper, options.dma_limits, &state.dma, bag)?,
            counters,
            direct_mmio: options.direct_mmio,
            negotiated: state.negotiated,
            write_multiple: state.write_multiple,
            intx: DerivedIntx::resume(&state.intx, bag)?,
        })
    }

    /// The function served (`None` once a failed reset lost it).
    pub fn function(&self) -> Option<&PassthroughFunction<D>> {
        self.function.as_ref()
    }

    fn served(&mut self) -> Result<&mut PassthroughFunction<D>, Failure> {
        self.function.as_mut().ok_or_else(|| {
            Failure::Fatal(Refusal::new(
                Errno::ENODEV,
                "the device was lost in a failed reset".to_string(),
            ))
        })
    }

    /// How long the caller may wait for the next message before
    /// [`poll_device`](Self::poll_device) is due (a derived INTx waiting for a command
    /// to complete); `None`: wait as long as it takes.
    pub fn poll_interval(&self) -> Option<Duration> {
        self.intx.poll_interval()
    }

    /// Look at the device for what it signals without an interrupt VFIO delivers
    /// (the derived INTx), and raise it to the client.
    pub fn poll_device(&mut self) {
        let before = self.intx.signals();
        if let Some(function) = self.function.as_mut() {
            self.intx.poll(function);
        }
        self.count_intx_signals(before);
    }

    fn count_intx_signals(&self, before: u64) {
        let raised = self.intx.signals() - before;
        if raised > 0 {
            self.counters
                .derived_intx_signals
                .fetch_add(raised, Relaxed);
        }
    }

    /// After a BAR access that was served: what it means for a derived INTx.
    fn after_bar_access(&mut self, region: u32, offset: u64, len: usize, written: Option<&[u8]>) {
        let Ok(RegionId::Bar(bar)) = RegionId::from_index(region) else {
            return;
        };
        let Some(function) = self.function.as_mut() else {
            return;
        };
        if bar.is_rom() || !function.derives_intx() {
            return;
        }
        let before = self.intx.signals();
        self.intx.after_access(function, bar, offset, len, written);
        self.count_intx_signals(before);
    }

    /// Counters so far (socket path empty: the server fills it in).
    pub fn status(&self) -> VfioUserStatus {
        self.counters.snapshot(Default::default(), self.direct_mmio)
    }

    /// Handle one message. Refused commands get an error reply (errno and reason
    /// logged); a client that cannot be talked to any more (wrong version, a header
    /// that cannot be trusted) is disconnected.
    pub fn handle(&mut self, header: &Header, payload: &[u8], fds: Vec<OwnedFd>) -> Outcome {
        bump(&self.counters.messages);
        let started = Instant::now();
        let parsed = parse_request(header, payload, fds);
        let result = match parsed {
            Ok(request) => self.dispatch(request),
            Err(refusal) => Err(Failure::Refused(refusal)),
        };
        // Where udrv's time goes per kind of message (`udrv status`, the benches).
        let spent = match Command::from_raw(header.command) {
            Some(Command::DmaMap) => Some(&self.counters.dma_map_ns),
            Some(Command::DmaUnmap) => Some(&self.counters.dma_unmap_ns),
            Some(Command::RegionRead | Command::RegionWrite | Command::RegionWriteMulti) => {
                Some(&self.counters.region_access_ns)
            }
            _ => None,
        };
        if let Some(counter) = spent {
            let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            counter.fetch_add(ns, Relaxed);
        }
        // Device errors behind an access that itself succeeded (a config read that
        // read all-ones because the device failed) show in the status.
        if let Some(function) = self.function.as_mut() {
            for e in function.take_errors() {
                self.counters.error(e.to_string());
            }
        }
        match result {
            Ok(reply) if header.no_reply() => {
                drop(reply);
                Outcome::Nothing
            }
            Ok(reply) => Outcome::Reply(reply_header(header, reply.payload.len(), None), reply),
            Err(Failure::Refused(refusal)) => {
                bump(&self.counters.error_replies);
                self.counters.error(format!(
                    "command {} (id {}): {refusal}",
                    header.command, header.id
                ));
                if header.no_reply() {
                    return Outcome::Nothing;
                }
                Outcome::Reply(reply_header(header, 0, Some(refusal.errno)), Reply::empty())
            }
            Err(Failure::Fatal(refusal)) => {
                bump(&self.counters.disconnects_for_errors);
                self.counters.error(format!(
                    "command {}: {refusal}; disconnecting",
                    header.command
                ));
                Outcome::Disconnect(Some((
                    reply_header(header, 0, Some(refusal.errno)),
                    Reply::empty(),
                )))
            }
        }
    }

    fn dispatch(&mut self, request: Request) -> Result<Reply, Failure> {
        if !self.negotiated && !matches!(request, Request::Version { .. }) {
            return Err(Refusal::new(
                Errno::EINVAL,
                "the first message must be VERSION".to_string(),
            )
            .into());
        }
        match request {
            Request::Version {
                major,
                minor,
                capabilities,
            } => {
                if self.negotiated {
                    return Err(
                        Refusal::new(Errno::EINVAL, "VERSION sent twice".to_string()).into(),
                    );
                }
                if major != VERSION_MAJOR {
                    return Err(Failure::Fatal(Refusal::new(
                        Errno::ENOTSUP,
                        format!("protocol version {major}.{minor}: udrv speaks {VERSION_MAJOR}.{VERSION_MINOR}"),
                    )));
                }
                self.negotiated = true;
                self.write_multiple = capabilities.write_multiple.unwrap_or(false);
                let json = server_capabilities(&capabilities, self.dma.page_size());
                let mut payload = Payload::with_capacity(4 + json.len() + 1)
                    .u16(VERSION_MAJOR)
                    .u16(minor.min(VERSION_MINOR))
                    .bytes(json.as_bytes())
                    .0;
                payload.push(0);
                Ok(Reply::bytes(payload))
            }
            Request::DmaMap {
                flags,
                offset,
                address,
                size,
                fd,
            } => {
                let has_fd = fd.is_some();
                self.dma.map(address, size, flags, offset, fd)?;
                bump(&self.counters.dma_maps);
                tracing::debug!(address, size, has_fd, "vfio-user DMA_MAP");
                self.publish_dma();
                Ok(Reply::empty())
            }
            Request::DmaUnmap {
                argsz: _,
                flags,
                address,
                size,
            } => {
                let done = if flags & dma_flags::UNMAP_ALL != 0 {
                    if address != 0 || size != 0 {
                        return Err(Refusal::new(
                            Errno::EINVAL,
                            "DMA_UNMAP with the unmap-all flag names a range".to_string(),
                        )
                        .into());
                    }
                    self.dma.unmap_all()
                } else {
                    self.dma.unmap(address, size)
                };
                self.publish_dma();
                done?;
                bump(&self.counters.dma_unmaps);
                // The reply is the request's DMA entry (without dirty bitmap).
                Ok(Reply::bytes(
                    Payload::with_capacity(24)
                        .u32(24)
                        .u32(flags)
                        .u64(address)
                        .u64(size)
                        .0,
                ))
            }
            Request::DeviceGetInfo { argsz: _ } => {
                let mut flags = DEVICE_FLAGS_PCI;
                if self.served()?.device().can_reset() {
                    flags |= DEVICE_FLAGS_RESET;
                }
                Ok(Reply::bytes(
                    Payload::with_capacity(16)
                        .u32(16)
                        .u32(flags)
                        .u32(NUM_REGIONS)
                        .u32(irqs::NUM_IRQS)
                        .0,
                ))
            }
            Request::RegionInfo { argsz, index } => {
                let direct = self.direct_mmio;
                let function = self.served()?;
                let fd = if direct {
                    function.device().mmap_fd()
                } else {
                    None
                };
                let (payload, fd) = regions::info(function, index, argsz, fd)?;
                Ok(Reply {
                    payload,
                    fds: fd.into_iter().collect(),
                })
            }
            Request::IrqInfo { argsz: _, index } => {
                Ok(Reply::bytes(irqs::info(self.served()?, index)?))
            }
            Request::SetIrqs {
                action,
                index,
                start,
                count,
                data,
            } => {
                let function = self.function.as_mut();
                match function {
                    Some(function) if index == IrqIndex::Intx.raw() && function.derives_intx() => {
                        let before = self.intx.signals();
                        self.intx.set(function, action, start, count, data)?;
                        self.count_intx_signals(before);
                    }
                    _ => irqs::set(self.served()?, action, index, start, count, &data)?,
                }
                bump(&self.counters.irq_sets);
                Ok(Reply::empty())
            }
            Request::RegionRead {
                region,
                offset,
                count,
            } => {
                let mut payload = Payload::with_capacity(16 + count as usize)
                    .u64(offset)
                    .u32(region)
                    .u32(count)
                    .0;
                payload.resize(16 + count as usize, 0);
                regions::read(self.served()?, region, offset, &mut payload[16..])?;
                bump(&self.counters.region_reads);
                self.after_bar_access(region, offset, count as usize, None);
                Ok(Reply::bytes(payload))
            }
            Request::RegionWrite {
                region,
                offset,
                data,
            } => {
                regions::write(self.served()?, region, offset, &data)?;
                bump(&self.counters.region_writes);
                self.after_bar_access(region, offset, data.len(), Some(&data));
                Ok(Reply::bytes(
                    Payload::with_capacity(16)
                        .u64(offset)
                        .u32(region)
                        .u32(data.len() as u32)
                        .0,
                ))
            }
            Request::RegionWriteMulti { writes } => {
                if !self.write_multiple {
                    return Err(Refusal::new(
                        Errno::ENOTSUP,
                        "REGION_WRITE_MULTI without write_multiple negotiated".to_string(),
                    )
                    .into());
                }
                // Each write in order; the first refusal stops the rest, as a
                // sequence of single writes would.
                for w in &writes {
                    let data = &w.data[..w.count as usize];
                    regions::write(self.served()?, w.region, w.offset, data)?;
                    bump(&self.counters.region_writes);
                    self.after_bar_access(w.region, w.offset, data.len(), Some(data));
                }
                Ok(Reply::bytes(
                    Payload::with_capacity(8).u64(writes.len() as u64).0,
                ))
            }
            Request::DeviceReset => {
                if !self.served()?.device().can_reset() {
                    return Err(Refusal::new(
                        Errno::ENOTSUP,
                        "the device offers no reset (DEVICE_GET_INFO says so)".to_string(),
                    )
                    .into());
                }
                self.reset()?;
                bump(&self.counters.resets);
                Ok(Reply::empty())
            }
        }
    }

    fn reset(&mut self) -> Result<(), Failure> {
        self.served()?;
        let Some(function) = self.function.take() else {
            return Ok(());
        };
        // A reset disables INTx as it does the vectors VFIO delivers.
        self.intx = DerivedIntx::default();
        match function.reset_for_client() {
            Ok(fresh) => {
                self.function = Some(fresh);
                Ok(())
            }
            Err(e) => Err(Failure::Fatal(Refusal::new(
                Errno::EIO,
                format!("DEVICE_RESET: {e}"),
            ))),
        }
    }

    pub(super) fn publish_dma(&self) {
        let usage = self.dma.usage();
        self.counters.dma_mappings.store(usage.mappings, Relaxed);
        self.counters
            .dma_mapped_bytes
            .store(usage.device_bytes, Relaxed);
    }

    /// End the session (the client went away): the device quiesced (bus mastering
    /// and every vector the client wired off), every DMA mapping removed, and a fresh
    /// function built over the device for the next client. Each step is tried.
    pub fn end(mut self) -> Result<PassthroughFunction<D>, SessionEndError> {
        let quiesced = self.function.as_mut().map(PassthroughFunction::quiesce);
        if let Err(e) = self.dma.unmap_all() {
            self.counters
                .error(format!("unmapping the client's DMA: {e}"));
        }
        self.publish_dma();
        let function = self.function.take().ok_or(SessionEndError::DeviceLost)?;
        if let Some(Err(e)) = quiesced {
            return Err(SessionEndError::Quiesce(e));
        }
        PassthroughFunction::new(function.into_device()).map_err(SessionEndError::Rebuild)
    }
}

/// Why a session could not hand its device on to the next client.
#[derive(Debug, thiserror::Error)]
pub enum SessionEndError {
    /// A failed DEVICE_RESET lost the device.
    #[error("the device was lost in a failed reset")]
    DeviceLost,
    /// Bus mastering or a vector could not be turned off.
    #[error("quiescing the device: {0}")]
    Quiesce(PassthroughError),
    /// The function could not be built again over the device.
    #[error("rebuilding the function for the next client: {0}")]
    Rebuild(PassthroughError),
}

/// Why a command failed: an error reply, or a reply and a disconnect.
enum Failure {
    Refused(Refusal),
    Fatal(Refusal),
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Failure {
        Failure::Refused(r)
    }
}
