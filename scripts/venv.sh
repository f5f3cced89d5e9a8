# Sourced by scripts/serve and scripts/test: make (once) and activate the project's virtual
# environment in .venv, whatever python3 is first on PATH. A stock Debian/Ubuntu Python
# refuses global pip installs (PEP 668) and may ship without venv/ensurepip; as root we
# install python3-venv, otherwise we say what is missing.
# usage: . scripts/venv.sh EXTRAS   (EXTRAS: "" or "[test]")
venv_dir="$(pwd)/.venv"
if [ ! -x "$venv_dir/bin/python" ] || ! "$venv_dir/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$venv_dir"
    if ! python3 -m venv "$venv_dir" >/dev/null 2>&1; then
        rm -rf "$venv_dir"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq
            pyver="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
            apt-get install -y -qq python3-venv "python${pyver}-venv" >/dev/null 2>&1 \
                || apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$venv_dir"
        else
            echo "error: python3 cannot create a virtual environment; install python3-venv" >&2
            exit 1
        fi
    fi
fi
# shellcheck disable=SC1091
. "$venv_dir/bin/activate"
stamp="$venv_dir/.installed$1"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    python -m pip install -q --disable-pip-version-check -e ".$1"
    touch "$stamp"
fi
