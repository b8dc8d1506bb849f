from bankflow.cli import main

raise SystemExit(main())
