#!/usr/bin/env bash
# Checks the packages `make packages` built, the way an operator meets them: installs the .deb
# on this machine with dpkg -i, checks the files, the conffile, the user, the unit
# (systemd-analyze verify and security), `perapera --version` and `perapera check` as the
# service user, that nothing was enabled, that an upgrade keeps the checkpoints and a changed
# conffile, then removes (dpkg -r) and purges (dpkg --purge) it and checks what is left.
# Inspects the .rpm's file list, config files and scripts with rpm -qp.
# Needs root (dpkg -i). Refuses to touch a perapera package the machine already has.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "check-packages: FAIL: $*" >&2; exit 1; }
ok() { echo "check-packages: ok: $*"; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
deb=$(ls target/debian/perapera_"$version"-*.deb 2>/dev/null | head -1)
rpmfile=$(ls target/generate-rpm/perapera-"$version"-*.rpm 2>/dev/null | head -1)
[ -n "$deb" ] || fail "no target/debian/perapera_$version-*.deb: run make deb"
[ -n "$rpmfile" ] || fail "no target/generate-rpm/perapera-$version-*.rpm: run make rpm"
[ "$(id -u)" -eq 0 ] || fail "dpkg -i needs root"
if dpkg-query -W -f='${Status}' perapera 2>/dev/null | grep -q installed; then
    fail "a perapera package is already installed here; not touching it"
fi

# --- .deb contents ---
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/perapera ./etc/perapera/perapera.toml ./usr/lib/systemd/system/perapera.service \
    ./usr/share/man/man1/perapera.1.gz ./usr/share/man/man1/perapera-run.1.gz \
    ./usr/share/bash-completion/completions/perapera ./usr/share/zsh/vendor-completions/_perapera \
    ./usr/share/fish/vendor_completions.d/perapera.fish ./usr/share/perapera/grafana/perapera.json \
    ./usr/share/perapera/prometheus/alerts.yml; do
    grep -q " $f\$" <<<"$contents" || fail "$deb lacks $f"
done
dpkg-deb -f "$deb" Depends | grep -q libsystemd0 || fail "Depends lacks libsystemd0"
ok "deb holds the binary, unit, config, man pages, completions, dashboard and alerts"

# --- install ---
state_dir=/var/lib/perapera
dpkg -i "$deb" >/dev/null
trap 'dpkg --purge perapera >/dev/null 2>&1 || true' EXIT
[ -x /usr/bin/perapera ] || fail "/usr/bin/perapera missing after dpkg -i"
/usr/bin/perapera --version | grep -qx "perapera $version" || fail "perapera --version: $(/usr/bin/perapera --version)"
dpkg-query -W -f='${Conffiles}\n' perapera | grep -q "/etc/perapera/perapera.toml" \
    || fail "/etc/perapera/perapera.toml is not a conffile"
getent passwd perapera >/dev/null || fail "no perapera user"
[ "$(getent passwd perapera | cut -d: -f6)" = "$state_dir" ] || fail "perapera's home is not $state_dir"
getent passwd perapera | cut -d: -f7 | grep -q nologin || fail "perapera has a login shell"
[ "$(stat -c %G:%a /etc/perapera/perapera.toml)" = "perapera:640" ] \
    || fail "config is $(stat -c %G:%a /etc/perapera/perapera.toml), want perapera:640"
[ ! -e /etc/systemd/system/multi-user.target.wants/perapera.service ] || fail "the unit was enabled without the operator"
ok "installed: binary, conffile, user perapera (home $state_dir, nologin), config perapera:640, unit not enabled"

unit=/usr/lib/systemd/system/perapera.service
systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit"
exposure=$(systemd-analyze security --offline=true "$unit" 2>&1 | sed -n 's/.*Overall exposure level for perapera.service: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || fail "systemd-analyze security printed no exposure"
awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }' || fail "exposure $exposure > 2.0"
ok "systemd-analyze verify passes; security exposure $exposure (<= 2.0)"

man_page=$(zcat /usr/share/man/man1/perapera.1.gz)
grep -q '^.TH perapera 1' <<<"$man_page" || fail "perapera.1 is not a man page"
grep -q 'cursor' <<<"$man_page" || fail "perapera.1 does not list the subcommands"
bash -c 'source /usr/share/bash-completion/completions/perapera && complete -p perapera' >/dev/null \
    || fail "the bash completion does not register"
ok "man page and bash completion"

# The packaged config is valid as the service user would run it (with a state dir it owns).
tmp_state=$(mktemp -d)
chown perapera:perapera "$tmp_state"
sed "s#^directory = \"/var/lib/perapera\"#directory = \"$tmp_state\"#" /etc/perapera/perapera.toml > "$tmp_state/perapera.toml"
chown perapera:perapera "$tmp_state/perapera.toml"
setpriv --reuid perapera --regid perapera --clear-groups /usr/bin/perapera check -c "$tmp_state/perapera.toml" >/dev/null \
    || fail "perapera check of the packaged config as user perapera"
rm -rf "$tmp_state"
ok "perapera check of the packaged config as user perapera"

# --- upgrade (reinstall) keeps checkpoints and the operator's config ---
install -d -o perapera -g perapera -m 0700 "$state_dir"
echo '{"version":1,"sources":{}}' > "$state_dir/checkpoint.json"
echo "# operator was here" >> /etc/perapera/perapera.toml
dpkg -i --force-confold "$deb" >/dev/null
grep -q '"version":1' "$state_dir/checkpoint.json" || fail "upgrade lost the checkpoint"
grep -q "operator was here" /etc/perapera/perapera.toml || fail "upgrade replaced a changed conffile"
ok "upgrade keeps $state_dir and the changed conffile"

# --- remove, then purge ---
installed=$(dpkg -L perapera)
dpkg -r perapera >/dev/null
while read -r path; do
    [ -d "$path" ] && continue
    [ "$path" = /etc/perapera/perapera.toml ] && continue
    [ ! -e "$path" ] || fail "dpkg -r left $path"
done <<<"$installed"
[ ! -e /usr/bin/perapera ] || fail "dpkg -r left /usr/bin/perapera"
[ ! -e "$unit" ] || fail "dpkg -r left the unit"
[ -e /etc/perapera/perapera.toml ] || fail "dpkg -r removed the conffile (only purge may)"
[ -e "$state_dir/checkpoint.json" ] || fail "dpkg -r removed the checkpoints (only purge may)"
ok "dpkg -r removes the program, keeps config and checkpoints"
dpkg --purge perapera >/dev/null
trap - EXIT
[ ! -e /etc/perapera ] || fail "dpkg --purge left /etc/perapera"
[ ! -e "$state_dir" ] || fail "dpkg --purge left $state_dir"
! dpkg-query -W -f='${Status}' perapera 2>/dev/null | grep -q installed || fail "still installed after purge"
ok "dpkg --purge removes config and checkpoints (the system user stays, as Debian does)"

# --- .rpm ---
files=$(rpm -qlp "$rpmfile" 2>/dev/null)
for f in /usr/bin/perapera /etc/perapera/perapera.toml /usr/lib/systemd/system/perapera.service \
    /usr/share/man/man1/perapera.1.gz /usr/share/bash-completion/completions/perapera \
    /usr/share/perapera/grafana/perapera.json /usr/share/perapera/prometheus/alerts.yml; do
    grep -qx "$f" <<<"$files" || fail "$rpmfile lacks $f"
done
rpm -qcp "$rpmfile" 2>/dev/null | grep -qx /etc/perapera/perapera.toml || fail "the config is not a %config file in the rpm"
scripts=$(rpm -qp --scripts "$rpmfile" 2>/dev/null)
grep -q "preinstall scriptlet" <<<"$scripts" && grep -q "useradd --system" <<<"$scripts" \
    || fail "the rpm does not create the user before install"
grep -q "preuninstall scriptlet" <<<"$scripts" && grep -q "disable --now perapera.service" <<<"$scripts" \
    || fail "the rpm does not stop the service on erase"
! grep -q "systemctl enable\|preset" <<<"$scripts" || fail "the rpm enables the service"
rpm -qp --requires "$rpmfile" 2>/dev/null | grep -q libsystemd || fail "the rpm does not require libsystemd"
ok "rpm: files, %config, scripts (user, stop on erase, nothing enabled), requires libsystemd"
echo "check-packages: all checks passed"
