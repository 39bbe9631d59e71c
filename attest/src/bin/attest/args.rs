//! Command-line options: `--name VALUE`, `--flag`, positionals; anything left over is an error.

/// The arguments still to consume.
#[derive(Debug)]
pub struct Args {
    rest: Vec<String>,
}

impl Args {
    /// All arguments after the program name.
    pub fn new(argv: Vec<String>) -> Args {
        Args { rest: argv }
    }

    /// Takes the first argument as the command.
    pub fn next_command(&mut self) -> Option<String> {
        if self.rest.is_empty() {
            None
        } else {
            Some(self.rest.remove(0))
        }
    }

    /// Takes `--name VALUE`, if present.
    ///
    /// # Errors
    /// The option is given without a value, or twice.
    pub fn value(&mut self, name: &str) -> Result<Option<String>, String> {
        let Some(i) = self.rest.iter().position(|a| a == name) else {
            return Ok(None);
        };
        if i + 1 >= self.rest.len() || self.rest[i + 1].starts_with("--") {
            return Err(format!("{name} needs a value"));
        }
        let v = self.rest.remove(i + 1);
        self.rest.remove(i);
        if self.rest.iter().any(|a| a == name) {
            return Err(format!("{name} given twice"));
        }
        Ok(Some(v))
    }

    /// Takes `--name VALUE`, which must be present.
    ///
    /// # Errors
    /// As [`Args::value`], or the option is missing.
    pub fn required(&mut self, name: &str) -> Result<String, String> {
        self.value(name)?.ok_or_else(|| format!("missing {name}"))
    }

    /// Takes `--flag`; true if it was there.
    pub fn flag(&mut self, name: &str) -> bool {
        let before = self.rest.len();
        self.rest.retain(|a| a != name);
        self.rest.len() != before
    }

    /// Takes the first argument that is not an option.
    ///
    /// # Errors
    /// There is none.
    pub fn positional(&mut self, what: &str) -> Result<String, String> {
        let i = self.rest.iter().position(|a| !a.starts_with("--")).ok_or_else(|| format!("missing {what}"))?;
        Ok(self.rest.remove(i))
    }

    /// Checks that nothing is left.
    ///
    /// # Errors
    /// The first argument no option took.
    pub fn finish(self) -> Result<(), String> {
        match self.rest.first() {
            None => Ok(()),
            Some(a) => Err(format!("unexpected argument {a:?} (see `attest help`)")),
        }
    }
}
