# Everything runs in .venv/ at the repo root, created on first use with every extra installed.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# wheels of what the pex packs (pex/requirements.txt), fetched at install so that it builds offline
WHEELHOUSE := wheelhouse
# The suite runs in a network namespace that has only loopback: nothing can leave this machine.
LOOPBACK_ONLY := unshare --net sh -c 'ip link set lo up && exec "$$0" "$$@"'

.PHONY: install demo test lint java nginx clean bench bench-reader pex

install: $(STAMP) $(WHEELHOUSE)/.stamp

$(STAMP): setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	touch $(STAMP)

$(WHEELHOUSE)/.stamp: pex/requirements.txt $(STAMP)
	$(PY) -m pip wheel -q -w $(WHEELHOUSE) -r pex/requirements.txt
	touch $@

# img2dataset.pex: img2dataset-ng, pyspark, s3fs and their dependencies for this Python and platform;
# run scripts with it (`./img2dataset.pex script.py`) and point PYSPARK_PYTHON at it (docs/pex.md)
pex: install
	rm -rf $(WHEELHOUSE)/self
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w $(WHEELHOUSE)/self .
	$(VENV)/bin/pex img2dataset-ng -r pex/requirements.txt --no-pypi --find-links $(WHEELHOUSE) \
		--find-links $(WHEELHOUSE)/self --python-shebang '/usr/bin/env python3' -o img2dataset.pex
	@ls -la img2dataset.pex

java:
	@command -v java >/dev/null || (apt-get update -q && apt-get install -y -q default-jre-headless)

demo: install
	$(PY) examples/demo.py

test: install java
	$(LOOPBACK_ONLY) $(PY) -m pytest tests -q -p no:cacheprovider --timeout=900 --durations=25 $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check img2dataset_ng tests examples bench
	$(VENV)/bin/ruff format --check img2dataset_ng tests examples bench

nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || (apt-get update -q && apt-get install -y -q nginx-light)

# img2dataset 1.47 (installed into bench/.venv-img2dataset on first use) against ours, on two corpora (mixes);
# the registry is needed only for that first install, the runs themselves see only loopback
bench: install nginx
	$(PY) bench/reader_rss.py --rows 1000000 10000000 --ensure-only
	$(PY) bench/corpus.py --count 2000
	$(PY) bench/corpus.py --count 2000 --mix web
	$(LOOPBACK_ONLY) $(PY) bench/reader_rss.py --rows 1000000 10000000
	$(LOOPBACK_ONLY) $(PY) bench/compare.py --mix web --count 10000 --rounds 3
	$(LOOPBACK_ONLY) $(PY) bench/compare.py --mix heavy --count 10000 --rounds 3
	$(LOOPBACK_ONLY) $(PY) bench/codecs.py --mix web --per-format 150
	$(LOOPBACK_ONLY) $(PY) bench/codecs.py --mix heavy --per-format 150
	$(LOOPBACK_ONLY) $(PY) bench/overhead.py --mix web --count 3000
	$(LOOPBACK_ONLY) $(PY) bench/overhead.py --mix heavy --count 3000
	$(LOOPBACK_ONLY) $(PY) bench/compare.py --count 2000 --rounds 2 --latency-ms 200
	$(LOOPBACK_ONLY) $(PY) bench/memory.py
	$(LOOPBACK_ONLY) $(PY) bench/politeness.py --count 5000 --rounds 3
	$(LOOPBACK_ONLY) $(PY) bench/politeness.py --count 5000 --rounds 1 --throttled-share 0.2 --rate 20
	$(LOOPBACK_ONLY) $(PY) bench/politeness.py --count 5000 --rounds 3 --throttled-share 0.01 --rate 3
	$(LOOPBACK_ONLY) $(PY) bench/reprocess.py --count 2000 --rounds 3
	$(LOOPBACK_ONLY) $(PY) bench/model.py --count 6000 --rounds 3

# peak RSS while sharding a 10-million-row parquet, ours vs img2dataset 1.47
bench-reader: install
	$(PY) bench/reader_rss.py --rows 1000000 10000000

clean:
	rm -rf demo_output demo_images images .pytest_cache bench/.work
