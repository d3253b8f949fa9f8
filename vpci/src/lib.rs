//! The guest side of udrv: a virtual PCI bus that a guest enumerates, with config space
//! virtualised over real devices, and the frontends that serve it to a VMM.
