# Sourced by hack/*/build.sh: builds Go commands of the calling script's
# module into a cache folder, reporting progress on stderr, so that a first
# `cargo test` or `cargo run -- demo` that waits minutes for them says what it
# waits for.

# cache_dir NAME VERSION FILE... prints target/NAME/VERSION-KEY, KEY hashing
# the files (the module's go.mod and go.sum, its build.sh, this library).
cache_dir() {
	local name=$1 version=$2
	shift 2
	local root key
	root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
	key=$(cat "$@" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)
	echo "${CARGO_TARGET_DIR:-$root/target}/$name/$version-$key"
}

# gobuild LABEL OUT LDFLAGS NAME=PACKAGE... builds each PACKAGE (from the
# current folder's module) as OUT/NAME unless OUT/NAME exists. Holds a lock on
# OUT, so two processes do not build the same thing at once.
gobuild() {
	local label=$1 out=$2 ldflags=$3
	shift 3
	local todo=() spec
	for spec in "$@"; do [ -x "$out/${spec%%=*}" ] || todo+=("$spec"); done
	if [ ${#todo[@]} -eq 0 ]; then
		echo "$label: cached in $out" >&2
		return 0
	fi
	command -v go >/dev/null || {
		echo "go is not installed: install Go 1.26 or newer (https://go.dev/doc/install) to build $label" >&2
		return 1
	}
	mkdir -p "$out"
	if command -v flock >/dev/null; then
		exec 9>"$out.lock"
		flock 9
		todo=()
		for spec in "$@"; do [ -x "$out/${spec%%=*}" ] || todo+=("$spec"); done
		if [ ${#todo[@]} -eq 0 ]; then
			echo "$label: cached in $out (built by another process)" >&2
			return 0
		fi
	fi

	# -s -w: no symbol table or DWARF, which nobody debugs here and which the
	# linker spends a good part of its time writing. CGO_ENABLED=0 as
	# Kubernetes' and Helm's release builds: no C compiler needed.
	export CGO_ENABLED=0
	local started=$SECONDS every line_start line_end
	# A terminal gets one line rewritten each second; a log a line every 30 s.
	if [ -t 2 ]; then every=1 line_start=$'\r\033[K' line_end=''; else every=30 line_start='' line_end=$'\n'; fi
	echo "building $label (${todo[*]%%=*}) into $out" >&2
	echo "  first run only: several minutes on 2 cores; later runs reuse it" >&2
	local n=0 name log status
	for spec in "${todo[@]}"; do
		n=$((n + 1))
		name=${spec%%=*}
		log="$out/.$name.log"
		status="[$n/${#todo[@]}] $name"
		: >"$log"
		# -v names each package as it is compiled: their count is the progress.
		{
			go build -v -trimpath -ldflags "$ldflags" -o "$out/.$name.tmp" "${spec#*=}" 2>&1 && rc=0 || rc=$?
			echo "exit $rc"
		} | {
			packages=0 downloads=0 last=-$every rc=1
			while :; do
				if IFS= read -r -t 1 line; then
					case $line in
					"exit "*) rc=${line#exit } && break ;;
					"go: downloading "*) downloads=$((downloads + 1)) ;;
					*" "* | *:*) echo "$line" >>"$log" ;;
					*) packages=$((packages + 1)) ;;
					esac
				elif [ $? -le 128 ]; then
					break
				fi
				if [ $((SECONDS - last)) -ge "$every" ]; then
					last=$SECONDS
					s=$((SECONDS - started))
					printf '%s  %s: %d modules downloaded, %d packages compiled, %dm%02ds elapsed%s' \
						"$line_start" "$status" "$downloads" "$packages" $((s / 60)) $((s % 60)) "$line_end" >&2
				fi
			done
			printf '%s' "$line_start" >&2
			exit "$rc"
		} || {
			echo "  $status: go build failed after $((SECONDS - started))s:" >&2
			cat "$log" >&2
			return 1
		}
		mv "$out/.$name.tmp" "$out/$name"
		rm -f "$log"
		echo "  $status built at $((SECONDS - started))s" >&2
	done
	echo "$label built in $((SECONDS - started))s; cached in $out" >&2
}
