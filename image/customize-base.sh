#!/bin/sh
# mmdebstrap customize hook for the BASE root filesystem (stage 1 of image/build.py).
# $1: the root directory being built; $APPLIANCE_DEP_WHEELS: host directory of the PyPI
# dependency wheels (installed into the venv here, so stage 2 only adds our own wheel).
set -eu
root="$1"

# --- kernel: keep only the module families a virtual or storage appliance needs --------
kver=$(ls "$root/lib/modules")
mods="$root/lib/modules/$kver/kernel"
for d in drivers/gpu drivers/media drivers/net/wireless drivers/net/ethernet \
         drivers/infiniband drivers/staging drivers/iio drivers/isdn drivers/bluetooth \
         drivers/usb drivers/hid drivers/input/touchscreen drivers/input/joystick \
         drivers/input/misc drivers/video drivers/platform/chrome drivers/mmc \
         drivers/nfc drivers/net/can drivers/net/usb drivers/net/wwan drivers/net/ieee802154 \
         drivers/thunderbolt drivers/iommu/intel drivers/mtd drivers/hwmon drivers/leds \
         drivers/watchdog drivers/w1 drivers/edac drivers/parport drivers/pcmcia \
         sound net/wireless net/mac80211 net/bluetooth net/nfc net/can net/ieee802154 \
         fs/btrfs fs/xfs fs/ocfs2 fs/gfs2 fs/nfs fs/nfsd fs/cifs fs/smbfs fs/ceph fs/f2fs \
         fs/jfs fs/ubifs fs/nilfs2 fs/reiserfs fs/hfs fs/hfsplus fs/udf fs/ntfs3 fs/afs; do
    rm -rf "${mods:?}/$d"
done
chroot "$root" depmod -a "$kver"

# initramfs: the root disk is virtio (or any SCSI/NVMe disk); compress with zstd.
cat > "$root/etc/initramfs-tools/conf.d/appliance.conf" <<'CONF'
MODULES=most
COMPRESS=zstd
CONF
printf '%s\n' virtio_pci virtio_blk virtio_scsi virtio_net ext4 >> "$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k "$kver" >/dev/null

# --- Python: a venv that also sees Debian's rtslib-fb / configshell-fb / targetcli -----
chroot "$root" python3 -m venv --system-site-packages /opt/appliance
mkdir -p "$root/tmp/dep-wheels"
cp "$APPLIANCE_DEP_WHEELS"/*.whl "$root/tmp/dep-wheels/"
chroot "$root" sh -c '/opt/appliance/bin/pip install -q --no-index --no-cache-dir \
    --find-links /tmp/dep-wheels /tmp/dep-wheels/*.whl'
rm -rf "$root/tmp/dep-wheels"

# --- our handler is the only TCMU daemon: tcmu-runner stays installed for reference
# benchmarks but must neither start at boot nor be D-Bus activated when targetcli asks.
rm -f "$root/usr/share/dbus-1/system-services/org.kernel.TCMUService1.service"
chroot "$root" systemctl disable tcmu-runner.service >/dev/null 2>&1 || true
# the appliance is a target, not an initiator: iscsid starts only where the lab asks for it
chroot "$root" systemctl disable open-iscsi.service iscsid.socket iscsid.service >/dev/null 2>&1 || true

# --- read-only root: machine-id is bound from /run by systemd, D-Bus follows it ---------
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
ln -s /etc/machine-id "$root/var/lib/dbus/machine-id"
rm -f "$root/etc/iscsi/initiatorname.iscsi"
mkdir -p "$root/etc/rtslib-fb-target" "$root/root/.targetcli" "$root/var/lib/appliance"
echo appliance > "$root/etc/hostname"
rm -rf "$root/var/cache/apt" "$root/var/lib/apt/lists"/* "$root/var/log"/*
