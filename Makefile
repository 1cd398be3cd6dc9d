# candidate-relay: build, test, install, uninstall, check the systemd unit.
#
#   make build                      swift build -c release --static-swift-stdlib (the Swift
#                                   runtime inside the binary: the service needs no toolchain)
#   make test                       swift test
#   sudo make install               binary, unit, example config (if absent), credentials dir
#   make install DESTDIR=/tmp/pkg   staged install for packaging (unit under /lib/systemd/system)
#   sudo make uninstall             removes the binary and the unit; never the config, the
#                                   secrets or the state directory
#   make check-systemd              systemd-analyze verify + security (scripts/check-systemd.sh)

PREFIX     ?= /usr/local
DESTDIR    ?=
BINDIR     ?= $(PREFIX)/bin
SYSCONFDIR := /etc
# Fixed: the unit's ConfigurationDirectory= and LoadCredential= paths name /etc/candidate-relay.
CONFDIR    := $(SYSCONFDIR)/candidate-relay
# A local install goes where administrators put units; a staged (DESTDIR) one where packages do.
UNITDIR    ?= $(if $(DESTDIR),/lib/systemd/system,/etc/systemd/system)

SWIFT      ?= swift
INSTALL    ?= install
BINARY     ?= .build/release/candidate-relay
UNIT       := candidate-relay.service

.PHONY: all build test install uninstall check-systemd

all: build

build:
	$(SWIFT) build -c release --static-swift-stdlib

test:
	$(SWIFT) test

install:
	@test -x $(BINARY) || { echo "$(BINARY) not found: run 'make build' first" >&2; exit 1; }
	$(INSTALL) -d -m 0755 $(DESTDIR)$(BINDIR)
	$(INSTALL) -m 0755 $(BINARY) $(DESTDIR)$(BINDIR)/candidate-relay
	$(INSTALL) -d -m 0755 $(DESTDIR)$(UNITDIR)
	@# The unit is this release's: site changes belong in drop-ins (unit.d/), which stay. One
	@# edited in place (systemctl edit --full) is kept beside it as .old, and said so.
	@sed 's|/usr/local/bin/candidate-relay|$(BINDIR)/candidate-relay|' systemd/$(UNIT) > $(DESTDIR)$(UNITDIR)/$(UNIT).new
	@if [ -e $(DESTDIR)$(UNITDIR)/$(UNIT) ] && ! cmp -s $(DESTDIR)$(UNITDIR)/$(UNIT).new $(DESTDIR)$(UNITDIR)/$(UNIT); then \
		cp -p $(DESTDIR)$(UNITDIR)/$(UNIT) $(DESTDIR)$(UNITDIR)/$(UNIT).old; \
		echo "note: $(DESTDIR)$(UNITDIR)/$(UNIT) differed from this release's and is replaced; the previous one is kept as $(UNIT).old."; \
		echo "      Site changes belong in drop-ins ($(UNITDIR)/$(UNIT).d/*.conf, systemctl edit $(UNIT)): compare, move yours there."; \
	fi
	mv $(DESTDIR)$(UNITDIR)/$(UNIT).new $(DESTDIR)$(UNITDIR)/$(UNIT)
	chmod 0644 $(DESTDIR)$(UNITDIR)/$(UNIT)
	$(INSTALL) -d -m 0755 $(DESTDIR)$(CONFDIR)
	@if [ -e $(DESTDIR)$(CONFDIR)/config.yaml ]; then \
		echo "keeping existing $(DESTDIR)$(CONFDIR)/config.yaml"; \
	else \
		echo "$(INSTALL) -m 0644 config/candidate-relay.yaml $(DESTDIR)$(CONFDIR)/config.yaml"; \
		$(INSTALL) -m 0644 config/candidate-relay.yaml $(DESTDIR)$(CONFDIR)/config.yaml; \
	fi
	$(INSTALL) -d -m 0700 $(DESTDIR)$(CONFDIR)/credentials
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		echo "systemctl daemon-reload"; systemctl daemon-reload; \
	fi
	@echo "next: put comeet-api-key, comeet-secret and inbound-secrets in $(CONFDIR)/credentials (0600),"
	@echo "      then: systemctl enable --now candidate-relay   (see docs/operations.md)"

uninstall:
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		echo "systemctl disable --now $(UNIT)"; systemctl disable --now $(UNIT) || true; \
	fi
	rm -f $(DESTDIR)$(BINDIR)/candidate-relay
	rm -f $(DESTDIR)$(UNITDIR)/$(UNIT)
	rmdir $(DESTDIR)$(CONFDIR)/credentials 2>/dev/null || true
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		echo "systemctl daemon-reload"; systemctl daemon-reload; \
	fi
	@echo "kept: $(CONFDIR)/config.yaml, any secrets in $(CONFDIR)/credentials, and /var/lib/candidate-relay"

check-systemd:
	scripts/check-systemd.sh systemd/$(UNIT)
