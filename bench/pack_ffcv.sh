#!/usr/bin/env bash
# Pack ffcv for a machine without network access (see bench/carry_ffcv.md) into one tarball:
# wheels built for that machine's Python, and the shared libraries ffcv's compiled part loads
# (OpenCV core and imgproc, libturbojpeg and what they pull in), minus the C runtime.
#
#   bench/pack_ffcv.sh [--python python3.12] [--out build/ffcv_carry.tar.xz] [--no-cv2] [--extra "pytest"]
#
# --python: an interpreter of the target's Python version (ffcv has a compiled part).
# --no-cv2: leave out the OpenCV Python wheel when the target already has cv2.
# --extra:  more packages the target lacks, as wheels (e.g. "pytest pyyaml").
set -euo pipefail

python=python3
out=build/ffcv_carry.tar.xz
# the smallest OpenCV wheel built for NumPy 2 (50 MB; later ones are over 60 MB)
cv2=opencv-python-headless==4.10.0.84
extra=""
while [ $# -gt 0 ]; do
    case "$1" in
        --python) python=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --no-cv2) cv2=""; shift ;;
        --extra) extra=$2; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0" | cut -c3-; exit 0 ;;
        *) echo "error: unknown argument '$1' (see $0 --help)" >&2; exit 2 ;;
    esac
done

fail() { echo "error: $*" >&2; exit 2; }
command -v "$python" >/dev/null || fail "$python not found; pass --python with the target's Python version"
for tool in pkg-config g++ ldd objdump unzip xz; do
    command -v "$tool" >/dev/null || fail "$tool is missing; install: pkg-config g++ binutils unzip xz-utils libopencv-dev libturbojpeg0-dev"
done
pkg-config --exists opencv4 libturbojpeg || fail "OpenCV 4 / libturbojpeg development files are missing; install: libopencv-dev libturbojpeg0-dev"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pack="$work/ffcv_carry"
mkdir -p "$pack/wheels" "$pack/lib"
# shellcheck disable=SC2086  # $cv2 and $extra are word lists
"$python" -m pip wheel -q --no-deps -w "$pack/wheels" ffcv==1.0.2 fastargs terminaltables tqdm $cv2 $extra

unzip -q "$pack"/wheels/ffcv-*.whl 'ffcv/_libffcv*.so' -d "$work"
compiled=$(ls "$work"/ffcv/_libffcv*.so)
if ldd "$compiled" | grep -q "not found"; then
    fail "ffcv's compiled part has unresolved libraries: $(ldd "$compiled" | grep 'not found' | tr -s ' \n\t' ' ')"
fi
ldd "$compiled" | awk '$3 ~ /^\// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
        # the C and C++ runtimes belong to the target's system: replacing them breaks other code
        libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libstdc++.so*|libgcc_s.so*) ;;
        *) cp -L "$lib" "$pack/lib/" ;;
    esac
done

cat > "$pack/env.sh" <<'EOF'
# Source this on the target before using ffcv: its shared libraries come first.
_ffcv_carry=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LD_LIBRARY_PATH="$_ffcv_carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
EOF
cat > "$pack/install.sh" <<'EOF'
#!/usr/bin/env bash
# On the target: install the packed wheels without network access, then check that ffcv loads.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
"$python" -m pip install -q --no-index --no-deps "$here"/wheels/*.whl
source "$here/env.sh"
"$python" -c "import cv2, ffcv.loader; print('ffcv', ffcv.__version__, 'and OpenCV', cv2.__version__, 'load')"
EOF
chmod +x "$pack/install.sh"

mkdir -p "$(dirname "$out")"
XZ_OPT=-T0 tar -cJf "$out.partial" -C "$work" ffcv_carry
mv "$out.partial" "$out"
versions() { objdump -T "$compiled" "$pack"/lib/* | grep -o "$1_[0-9.]*" | sort -uV | tail -1; }
echo "packed $(du -h "$out" | cut -f1) into $out ($(ls "$pack/wheels" | wc -l) wheels, $(ls "$pack/lib" | wc -l) libraries)"
echo "the target needs glibc >= $(versions GLIBC | cut -d_ -f2) and a libstdc++ with $(versions GLIBCXX)"
