#!/usr/bin/env bash
# Install the TeX that `make pdf` needs (XeLaTeX, the LaTeX packages Sphinx and Jupyter Book
# use, the GNU FreeFont faces Sphinx sets the text in, latexmk) from Debian's packages.
# texlive-fonts-extra is large (about 0.5 GB to download) but is the only Debian package with
# bbm.sty, which Jupyter Book's LaTeX class loads.
# Does nothing when they are already there. Needs root or sudo.
set -euo pipefail

if command -v xelatex >/dev/null && command -v latexmk >/dev/null && kpsewhich fncychap.sty bbm.sty >/dev/null \
  && fc-list | grep -q FreeSerif; then
  exit 0
fi
bash "$(dirname "$0")/apt_install.sh" \
  latexmk texlive-xetex texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended \
  texlive-fonts-extra texlive-plain-generic fonts-freefont-otf lmodern make
xelatex --version | head -1
