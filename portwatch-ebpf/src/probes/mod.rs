mod bind;
mod release;
mod state;
mod task_file;
mod holders;
mod doctor;
