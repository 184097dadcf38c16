# perapera %pre: the system user (nothing is enabled or started).
getent group perapera >/dev/null || groupadd --system perapera
getent passwd perapera >/dev/null || useradd --system --gid perapera --no-create-home \
    --home-dir /var/lib/perapera --shell /sbin/nologin --comment "perapera log shipper" perapera
exit 0
