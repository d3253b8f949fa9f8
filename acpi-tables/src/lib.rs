//! ACPI tables that describe PCI root bridges to a guest: MCFG for ECAM and a DSDT with
//! each root bridge's resources and interrupt routing.
