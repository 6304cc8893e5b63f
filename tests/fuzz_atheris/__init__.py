"""Coverage-guided fuzz harnesses (atheris). Not collected by pytest; see each module."""
