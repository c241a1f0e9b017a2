# serfd developer tasks.
#   make deb       build dist/serfd_<version>_<arch>.deb (dpkg-buildpackage + pybuild;
#                  <arch> is this machine's, the package carries a C module)
#   make lint-deb  lintian on that package (fails on errors)
#   make repo      a signed apt repository in build/repo/ (packaging/repo/build-repo):
#                  pool, indices by apt-ftparchive (apt-utils), InRelease/Release.gpg by
#                  gpg, the keyring serfd-archive-keyring.gpg and the source entry
#                  (serfd.sources, serfd.list) for REPO_URL. The signing key is made on
#                  first use in REPO_KEY_DIR (default build/repo-key/, outside git; point
#                  it at your own GnuPG home to sign with your key; REPO_KEY_ID picks
#                  one of its keys, REPO_KEY_PASSPHRASE_FILE unlocks it). REPO_DEBS:
#                  packages to add (default: `make deb`'s). The pool keeps every version.
#   make check-vagrant   syntax check of the Vagrantfile (ruby -c)
#
# The package is built in a copy of the tree under build/deb/, so the checkout
# never gets a debian/ directory or build leftovers; the .deb lands in dist/.
# Needs: debhelper dh-python pybuild-plugin-pyproject python3-all-dev
#        python3-setuptools build-essential fakeroot (Debian 12 or later).
# make repo also needs: apt-utils gpg gpg-agent.

VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
BUILD   := build/deb
SRCDIR  := $(BUILD)/serfd-$(VERSION)
ARCH    := $(shell PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg --print-architecture)
DEB     := dist/serfd_$(VERSION)_$(ARCH).deb
# Debian's own tools only: a python3 earlier on PATH (pyenv, a venv) breaks pybuild.
SYSPATH := /usr/sbin:/usr/bin:/sbin:/bin
SOURCES := pyproject.toml setup.py README.md serfd serfctl etc docs packaging
REPO         ?= build/repo
REPO_KEY_DIR ?= build/repo-key
REPO_URL     ?= file://$(abspath $(REPO))
REPO_DEBS    ?=

.PHONY: deb lint-deb repo check-vagrant clean

deb:
	@changelog=$$(PATH=$(SYSPATH) dpkg-parsechangelog -l packaging/debian/changelog -S Version); \
	if [ "$$changelog" != "$(VERSION)" ]; then \
		echo "packaging/debian/changelog says $$changelog, pyproject.toml says $(VERSION)" >&2; \
		exit 1; \
	fi
	rm -rf $(BUILD)
	mkdir -p $(SRCDIR) dist
	tar -c --exclude=__pycache__ --exclude='*.pyc' $(SOURCES) | tar -x -C $(SRCDIR)
	cp -r packaging/debian $(SRCDIR)/debian
	cp packaging/systemd/serfd.service $(SRCDIR)/debian/serfd.service
	cd $(SRCDIR) && env -i PATH=$(SYSPATH) HOME="$$HOME" LC_ALL=C.UTF-8 \
		dpkg-buildpackage -us -uc -b
	cp $(BUILD)/serfd_$(VERSION)_$(ARCH).deb $(DEB)
	@echo "built $(DEB)"

lint-deb: $(DEB)
	PATH=$(SYSPATH) lintian --fail-on error --info $(DEB)

repo:
ifeq ($(strip $(REPO_DEBS)),)
	$(MAKE) --no-print-directory deb
endif
	env -i PATH=$(SYSPATH) LC_ALL=C.UTF-8 $(if $(REPO_KEY_ID),REPO_KEY_ID=$(REPO_KEY_ID)) \
		$(if $(REPO_KEY_PASSPHRASE_FILE),REPO_KEY_PASSPHRASE_FILE=$(abspath $(REPO_KEY_PASSPHRASE_FILE))) \
		packaging/repo/build-repo $(REPO) $(REPO_KEY_DIR) $(REPO_URL) $(or $(strip $(REPO_DEBS)),$(DEB))

check-vagrant:
	ruby -c Vagrantfile

clean:
	rm -rf $(BUILD) dist
