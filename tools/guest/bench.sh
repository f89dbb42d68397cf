# The side-by-side benchmark's guest side (tools/bench_vhost_user_blk): sequential O_DIRECT
# writes and reads of 64 MiB, then 200 4 KiB writes each followed by an fsync. Times come from
# /proc/uptime (10 ms ticks), in the guest.
now() { cut -d' ' -f1 /proc/uptime; }
t0=$(now)
dd if=/dev/zero of=/dev/vda bs=1M count=64 oflag=direct conv=notrunc 2>/dev/null || exit 1
t1=$(now)
dd if=/dev/vda of=/dev/null bs=1M count=64 iflag=direct 2>/dev/null || exit 1
t2=$(now)
i=0
while [ $i -lt 200 ]; do
  dd if=/dev/zero of=/dev/vda bs=4096 seek=$i count=1 oflag=direct conv=fsync,notrunc 2>/dev/null || exit 1
  i=$((i + 1))
done
t3=$(now)
echo "GUEST-BENCH $t0 $t1 $t2 $t3" | awk '{ printf "GUEST-BENCH write=%.2f read=%.2f fsync=%.2f\n", $3 - $2, $4 - $3, $5 - $4 }'
