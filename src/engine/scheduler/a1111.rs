//! AUTOMATIC1111's `Sampler` and `Schedule type` infotext fields for sdspool's schedulers.
//!
//! Since its version 1.9 AUTOMATIC1111 writes the sampler and the schedule apart
//! (`Sampler: DPM++ 2M, Schedule type: Karras`); earlier infotexts have the combined names of
//! the registry ([`super::REGISTRY`], `DPM++ 2M Karras`) and no `Schedule type`, which it reads
//! as `Automatic`. `Automatic` means the sampler's own default schedule: Karras for `DPM++ 2M`
//! (its sampler table since 1.9), the model's plain (uniform) schedule for the others.

use super::SchedulerKind;

/// The schedule AUTOMATIC1111 calls Karras, as the registry's combined names end.
const KARRAS: &str = "Karras";

/// `(Sampler, Schedule type)` as AUTOMATIC1111 (1.9 and later) writes them for `kind`.
pub fn sampler_and_schedule(kind: SchedulerKind) -> (&'static str, &'static str) {
    let name = kind.a1111_name();
    match name.strip_suffix(" Karras") {
        Some(sampler) => (sampler, KARRAS),
        // DPM++ 2M's own default is Karras: the plain schedule has to be named.
        None if kind == SchedulerKind::DpmPp2m => (name, "Uniform"),
        None => (name, "Automatic"),
    }
}

/// Why an infotext's sampler cannot be honoured: the field at fault and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotASampler {
    /// `Sampler` or `Schedule type`.
    pub field: &'static str,
    pub message: String,
}

/// The scheduler an infotext's `Sampler` and `Schedule type` (absent in infotexts before 1.9)
/// mean.
pub fn from_sampler_and_schedule(
    sampler: &str,
    schedule: Option<&str>,
) -> Result<SchedulerKind, NotASampler> {
    let sampler = sampler.trim();
    let not_sampler = || NotASampler {
        field: "Sampler",
        message: format!("{sampler:?} is not a sampler sdspool has"),
    };
    let Some(schedule) = schedule.map(str::trim) else {
        // Before 1.9: a combined name, with the sampler's plain schedule.
        return SchedulerKind::from_a1111_name(sampler).ok_or_else(not_sampler);
    };
    let plain = SchedulerKind::from_a1111_name(sampler).ok_or_else(not_sampler)?;
    let karras = || SchedulerKind::from_a1111_name(&format!("{sampler} {KARRAS}"));
    let kind = match schedule {
        "Automatic" if plain == SchedulerKind::DpmPp2m => karras(),
        "Automatic" | "Uniform" => Some(plain),
        s if s.eq_ignore_ascii_case(KARRAS) => karras(),
        _ => None,
    };
    kind.ok_or_else(|| NotASampler {
        field: "Schedule type",
        message: format!("{schedule:?} with sampler {sampler:?} is not a schedule sdspool has"),
    })
}

/// Whether AUTOMATIC1111 records `ENSD` for `kind`: its samplers that draw noise at each step
/// (`uses_ensd`; sdspool's stochastic schedulers).
pub fn records_ensd(kind: SchedulerKind) -> bool {
    matches!(
        kind,
        SchedulerKind::EulerAncestral | SchedulerKind::Ddpm | SchedulerKind::Lcm
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheduler_reads_back_from_what_is_written() {
        for kind in SchedulerKind::ALL {
            let (sampler, schedule) = sampler_and_schedule(kind);
            assert_eq!(from_sampler_and_schedule(sampler, Some(schedule)), Ok(kind));
        }
        assert_eq!(
            sampler_and_schedule(SchedulerKind::DpmPp2mKarras),
            ("DPM++ 2M", "Karras")
        );
        assert_eq!(
            sampler_and_schedule(SchedulerKind::EulerAncestral),
            ("Euler a", "Automatic")
        );
    }

    #[test]
    fn automatic_is_the_samplers_own_default_and_old_names_read_as_before() {
        use SchedulerKind::*;
        let read = from_sampler_and_schedule;
        assert_eq!(read("DPM++ 2M", Some("Automatic")), Ok(DpmPp2mKarras));
        assert_eq!(read("DPM++ 2M", Some("Uniform")), Ok(DpmPp2m));
        assert_eq!(read("DPM++ 2M", None), Ok(DpmPp2m));
        assert_eq!(read("DPM++ 2M Karras", None), Ok(DpmPp2mKarras));
        assert_eq!(read("Euler", Some("Automatic")), Ok(Euler));
        assert_eq!(read("Euler a", Some("Uniform")), Ok(EulerAncestral));
        assert_eq!(
            read("Euler", Some("Karras")).unwrap_err().field,
            "Schedule type"
        );
        assert_eq!(
            read("DPM++ 2M", Some("Exponential")).unwrap_err().field,
            "Schedule type"
        );
        assert_eq!(
            read("Heun", Some("Automatic")).unwrap_err().field,
            "Sampler"
        );
    }
}
