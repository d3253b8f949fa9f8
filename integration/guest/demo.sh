#!/bin/sh
# The rig demo (the README's first command): what udrv sees and can claim in the rig.
echo "== PCI devices in the rig guest (udrv list) =="
udrv list 2>&1 || lspci -nn 2>&1
echo
echo "== IOMMU groups =="
for g in /sys/kernel/iommu_groups/*; do
  echo "group ${g##*/}: $(ls $g/devices | tr '\n' ' ')"
done
