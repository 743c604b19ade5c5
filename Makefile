# docextract: PGXS build.  `make && sudo make install`; `make test` runs every test.
EXTENSION = docextract
# The one source of the version: the control file, the install script's name
# and the library's version string all come from it.
EXTVERSION = 0.2.0
MODULE_big = docextract
OBJS = $(patsubst %.c,%.o,$(wildcard src/*.c))
# sql/docextract.sql is the current schema; the versioned install script is
# built from it.  Released install scripts are frozen, and an upgrade script
# leads from each to the next.
DATA_built = sql/$(EXTENSION)--$(EXTVERSION).sql
DATA = sql/docextract--0.1.0.sql $(wildcard sql/docextract--*--*.sql)
EXTRA_CLEAN = $(EXTENSION).control tmp_regress
PGFILEDESC = "docextract - AI document extraction inside PostgreSQL"

REGRESS = models templates documents extractions coercion credits review triggers
REGRESS_OPTS = --inputdir=test --temp-instance=tmp_regress --temp-config=test/regress.conf \
	--load-extension=docextract
TAP_TESTS = 1

# poppler, cairo, qpdf and libheif are linked into the parser helper only
# (below), never the library.
DEPS = libcurl json-c xlsxwriter
# -Wextra, less unused-parameter: PostgreSQL's own headers trip that one.
# A function used without its declaration (a missing include) is an error.
PG_CPPFLAGS = -std=gnu11 -Wextra -Wno-unused-parameter -Werror=implicit-function-declaration -DEXTVERSION=\"$(EXTVERSION)\" \
	$(shell pkg-config --cflags $(DEPS) 2>/dev/null)
SHLIB_LINK = $(shell pkg-config --libs $(DEPS) 2>/dev/null)

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(PGXS),)
include $(PGXS)
# TAP tests live in test/t; PGXS looks for t/*.pl under $(srcdir).
PROVE_TESTS = test/t/*.pl
# Two test files at a time (each has clusters and servers of its own): the
# suite takes about half as long on two cores.  PROVE_FLAGS=-j1 runs one.
PROVE_FLAGS = -j2
else
all:
	@echo "pg_config not found: install postgresql-server-dev-15, or run 'make test' (installs it)"
endif

all: $(EXTENSION).control

$(EXTENSION).control: $(EXTENSION).control.in Makefile
	sed 's/@EXTVERSION@/$(EXTVERSION)/' $< > $@

sql/$(EXTENSION)--$(EXTVERSION).sql: sql/$(EXTENSION).sql
	cp $< $@

# PGXS tracks no header dependencies: every object depends on every header.
$(OBJS): $(wildcard src/*.h)

# Each header compiles on its own (it includes what it needs), with the
# library's flags.
.PHONY: check-headers
check-headers:
	@for h in $(wildcard src/*.h); do \
		$(CC) $(CFLAGS) $(CPPFLAGS) -Werror -fsyntax-only -include $$h -x c /dev/null \
			|| { echo "$$h does not compile on its own"; exit 1; }; \
	done; echo "every header compiles on its own"

# The parser helper (src/parser.c runs it): poppler parses untrusted bytes
# there.  PGXS builds no PROGRAM next to MODULE_big, hence these rules.
ifneq ($(PGXS),)
PARSER = src/parser/docextract_parser
all: $(PARSER)
$(PARSER): $(PARSER).c src/parser/parser_protocol.h
	$(CC) -std=gnu11 $(CFLAGS) -Wextra -Wno-unused-parameter $(shell pkg-config --cflags poppler-glib cairo libqpdf libheif) \
		-o $@ $< $(LDFLAGS) $(shell pkg-config --libs poppler-glib cairo libqpdf libheif)
src/parser.o: src/parser/parser_protocol.h
install: install-parser
uninstall: uninstall-parser
.PHONY: install-parser uninstall-parser
install-parser: $(PARSER) installdirs
	$(INSTALL_PROGRAM) $(PARSER) '$(DESTDIR)$(pkglibdir)/'
uninstall-parser:
	rm -f '$(DESTDIR)$(pkglibdir)/docextract_parser'
EXTRA_CLEAN += $(PARSER)
endif

# The two commands of the README.  Both install what they need (as root or via sudo).
.PHONY: demo test
demo:
	bash test/demo.sh
test:
	bash test/run-tests.sh
