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
	@if ldd "$(BINARY)" 2>/dev/null | grep -q libswiftCore; then \
		echo "warning: $(BINARY) loads the Swift runtime from the toolchain's directory: the unit fails (status=127) if it cannot see it (ProtectHome=yes hides /home) or once it is upgraded or removed. Build with 'make build' (--static-swift-stdlib)." >&2; \
	fi
	$(INSTALL) -d -m 0755 $(DESTDIR)$(BINDIR)
	$(INSTALL) -m 0755 $(BINARY) $(DESTDIR)$(BINDIR)/candidate-relay
	$(INSTALL) -d -m 0755 $(DESTDIR)$(UNITDIR)
	@# The unit is this release's: site changes belong in drop-ins (unit.d/), which stay. Its last
	@# line records the checksum of what was shipped, so a unit edited in place (systemctl edit
	@# --full) is told from a previous release's: it is kept as .old-<time>, and said so.
	@sed 's|/usr/local/bin/candidate-relay|$(BINDIR)/candidate-relay|' systemd/$(UNIT) > "$(DESTDIR)$(UNITDIR)/$(UNIT).new"
	@echo "# shipped: sha256 $$(sha256sum < "$(DESTDIR)$(UNITDIR)/$(UNIT).new" | cut -c1-64)" >> "$(DESTDIR)$(UNITDIR)/$(UNIT).new"
	@unit="$(DESTDIR)$(UNITDIR)/$(UNIT)"; \
	if [ -e "$$unit" ]; then \
		shipped=$$(sed -n 's/^# shipped: sha256 //p' "$$unit" | tail -n 1); \
		actual=$$(grep -v '^# shipped: sha256 ' "$$unit" | sha256sum | cut -c1-64); \
		if [ "$$shipped" != "$$actual" ]; then \
			old="$$unit.old-$$(date +%Y%m%d%H%M%S)"; cp -p "$$unit" "$$old"; \
			echo "note: $$unit was edited in place (or installed by a release without this check); replaced, the previous one kept as $$old."; \
			echo "      Site changes belong in drop-ins ($(UNITDIR)/$(UNIT).d/*.conf, systemctl edit $(UNIT)): compare, move yours there."; \
		fi; \
	fi
	mv "$(DESTDIR)$(UNITDIR)/$(UNIT).new" "$(DESTDIR)$(UNITDIR)/$(UNIT)"
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
