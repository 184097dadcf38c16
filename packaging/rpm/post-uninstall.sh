# perapera %postun: reload units; on upgrade, restart a running service. The checkpoints in
# /var/lib/perapera are left alone (remove them by hand after an erase if wanted).
systemctl daemon-reload >/dev/null 2>&1 || :
if [ "$1" -ge 1 ]; then
    systemctl try-restart perapera.service >/dev/null 2>&1 || :
fi
exit 0
