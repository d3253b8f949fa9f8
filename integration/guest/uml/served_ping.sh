# The e1000e served by udrv in UML: its interface up as 10.0.0.2/24, pings the rig
# kernel at 10.0.0.1, then stays up, answering the rig's pings, until the rig creates
# /tmp/udrv-release (this root is the rig's /rig/uml/root over hostfs); the interface
# goes down before UML powers off. Kernel command line:
#   udrv_uml_flood=1   after the first pings, ping without end (the rig kills UML)
# Prints `uml: eth NAME`, `uml: ping ok|failed`, `uml: ping round-trip ...`, then
# `uml: waiting` or `uml: flooding`.
flood=
for word in $(cat /proc/cmdline); do
  case "$word" in
    udrv_uml_flood=*) flood=${word#*=} ;;
  esac
done
. /tasks/net.sh
eth=$(e1000e_interface) || { echo "uml: no e1000e interface"; exit 1; }
echo "uml: eth $eth"
bring_up "$eth" 10.0.0.2/24
if ping -c 5 -W 3 10.0.0.1 > /tmp/udrv-ping.out 2>&1; then
  echo "uml: ping ok"
else
  echo "uml: ping failed"
  cat /tmp/udrv-ping.out
fi
sed -n 's/^round-trip/uml: ping round-trip/p' /tmp/udrv-ping.out
if [ "$flood" = 1 ]; then
  echo "uml: flooding"
  while true; do ping -c 10 -W 1 10.0.0.1 > /dev/null 2>&1; done
fi
echo "uml: waiting"
i=0
while [ ! -e /tmp/udrv-release ] && [ $i -lt 600 ]; do
  sleep 0.1; i=$((i + 1))
done
# No interrupts in flight when the driver disables MSI-X at power-off.
ip link set "$eth" down
sleep 0.2
