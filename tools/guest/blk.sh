# The real-client test's guest side (tools/tests/qemu_vhost_user_blk.rs reads its markers).
# /dev/vda is 96 MiB: an ext4 filesystem in the first 64 MiB, known patterns past it.
set -e
pattern() { yes "vmm-memory pattern at block $1 " | head -c 4096; }
blocks="16384 16387 20480 24575"
for b in $blocks; do
  pattern "$b" > "/tmp/p$b"
  dd if="/tmp/p$b" of=/dev/vda bs=4096 seek="$b" count=1 oflag=direct conv=notrunc 2>/dev/null
done
# Written with O_DIRECT, so the backend has them, and not yet flushed: the host counts dirty
# pages in the disk file now (the negative control), then again after the fsync.
echo "GUEST-UNSYNCED"
sleep 2
dd if=/dev/zero of=/dev/vda bs=4096 count=0 conv=fsync,notrunc 2>/dev/null
echo "GUEST-SYNCED"
sleep 2
for b in $blocks; do
  dd if=/dev/vda of="/tmp/r$b" bs=4096 skip="$b" count=1 iflag=direct 2>/dev/null
  cmp "/tmp/p$b" "/tmp/r$b"
done
echo "GUEST-READBACK-OK"
/sbin/mke2fs -q -F -t ext4 -b 4096 /dev/vda 16384
mount -t ext4 /dev/vda /mnt
echo "hello from Debian's kernel on vmm-memory's vhost-user-blk" > /mnt/hello.txt
dd if=/dev/urandom of=/mnt/random.bin bs=4096 count=256 2>/dev/null
md5sum /mnt/random.bin | cut -d' ' -f1 | sed 's/^/GUEST-MD5 /'
sync
umount /mnt
echo "GUEST-FS-OK"
